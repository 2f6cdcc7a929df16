//! The cluster-mode writer against a mock API server: each test asserts the
//! exact request (method, path and query, content type, body) and answers as
//! the API server would. Too few requests time out; too many fail the writer.
#![allow(clippy::unwrap_used)]

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::client::Body;
use portico_controllers::{ApiWriter, Object, Write};
use serde_json::{Value, json};
use std::time::Duration;
use tower_test::mock::{Handle, pair};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn mk_svc(ns: &str, name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: Some("0b8d8c7a-5a8e-4c55-9a4e-3b5c1f7e2a10".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec::default()),
        ..Default::default()
    }
}

fn writer() -> (ApiWriter, ApiHandle) {
    let (mock, handle) = pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "default");
    (
        ApiWriter::new(client, Some("portico-controller-0".into())),
        handle,
    )
}

/// Answers one request after checking it; returns its JSON body.
async fn expect_request(
    handle: &mut ApiHandle,
    method: Method,
    path_and_query: &str,
    content_type: &str,
    reply: Value,
) -> Value {
    let (request, send) = handle
        .next_request()
        .await
        .expect("the writer sent no request");
    assert_eq!(request.method(), method);
    assert_eq!(request.uri().to_string(), path_and_query);
    assert_eq!(request.headers().get("content-type").unwrap(), content_type);
    let body = request.into_body().collect_bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    body
}

/// Answers one Event creation in `default` (echoing it, as the API server
/// does) and returns its body.
async fn expect_event(handle: &mut ApiHandle) -> Value {
    let (request, send) = handle.next_request().await.expect("no request");
    assert_eq!(request.method(), Method::POST);
    assert_eq!(
        request.uri().to_string(),
        "/apis/events.k8s.io/v1/namespaces/default/events?"
    );
    let body: Value =
        serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
    body
}

async fn run(writer: &ApiWriter, write: &Write) {
    tokio::time::timeout(Duration::from_secs(1), writer.write(write))
        .await
        .expect("the writer timed out")
        .unwrap();
}

#[tokio::test]
async fn service_spec_apply_is_a_forced_server_side_apply_with_portico_field_manager() {
    let (writer, mut handle) = writer();
    let svc = mk_svc("default", "api-tester");
    let write = Write::apply_service(
        &svc,
        json!({ "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"] }),
    );
    let reply = serde_json::to_value(&svc).unwrap();
    let server = tokio::spawn(async move {
        expect_request(
            &mut handle,
            Method::PATCH,
            "/api/v1/namespaces/default/services/api-tester?&force=true&fieldManager=portico",
            "application/apply-patch+yaml",
            reply,
        )
        .await
    });
    run(&writer, &write).await;
    assert_eq!(
        server.await.unwrap(),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": "api-tester", "namespace": "default" },
            "spec": { "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"] }
        })
    );
}

#[tokio::test]
async fn service_status_apply_goes_to_the_status_subresource() {
    let (writer, mut handle) = writer();
    let svc = mk_svc("team-a", "web");
    let condition = json!({ "type": "portico.dev/ClusterIPAllocated", "status": "False", "reason": "ClusterIPOutOfRange", "message": "m" });
    let write = Write::apply_service_status(&svc, json!({ "conditions": [condition.clone()] }));
    let reply = serde_json::to_value(&svc).unwrap();
    let server = tokio::spawn(async move {
        expect_request(
            &mut handle,
            Method::PATCH,
            "/api/v1/namespaces/team-a/services/web/status?&force=true&fieldManager=portico",
            "application/apply-patch+yaml",
            reply,
        )
        .await
    });
    run(&writer, &write).await;
    let body = server.await.unwrap();
    assert_eq!(body["status"], json!({ "conditions": [condition] }));
    assert_eq!(body["kind"], "Service");
}

#[tokio::test]
async fn a_duplicate_cluster_ip_is_reported_as_a_warning_event_on_the_service() {
    let (writer, mut handle) = writer();
    let svc = mk_svc("default", "b");
    let write = Write::event(
        &svc,
        true,
        "DuplicateClusterIP",
        "Audit",
        "clusterIP 10.96.5.5 is already held by Service default/a",
    );
    let server = tokio::spawn(async move { expect_event(&mut handle).await });
    run(&writer, &write).await;
    let body = server.await.unwrap();
    assert_eq!(body["type"], "Warning");
    assert_eq!(body["reason"], "DuplicateClusterIP");
    assert_eq!(body["action"], "Audit");
    assert_eq!(
        body["note"],
        "clusterIP 10.96.5.5 is already held by Service default/a"
    );
    assert_eq!(body["reportingController"], "portico.dev/controller");
    assert_eq!(body["reportingInstance"], "portico-controller-0");
    assert_eq!(
        body["regarding"],
        json!({ "apiVersion": "v1", "kind": "Service", "name": "b", "namespace": "default", "uid": "0b8d8c7a-5a8e-4c55-9a4e-3b5c1f7e2a10" })
    );
}

fn slice_target(name: &str) -> portico_controllers::Target {
    portico_controllers::Target {
        kind: portico_controllers::TargetKind::EndpointSlice,
        namespace: "default".into(),
        name: name.into(),
    }
}

fn slice_json(name: Option<&str>, resource_version: Option<&str>) -> Value {
    let mut metadata = json!({
        "generateName": "web-",
        "namespace": "default",
        "labels": {
            "kubernetes.io/service-name": "web",
            "endpointslice.kubernetes.io/managed-by": "endpointslice.portico.dev"
        },
        "ownerReferences": [{
            "apiVersion": "v1", "kind": "Service", "name": "web", "uid": "uid-web",
            "controller": true, "blockOwnerDeletion": true
        }]
    });
    if let Some(n) = name {
        metadata["name"] = json!(n);
    }
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": ["10.244.1.10"],
            "conditions": { "ready": true, "serving": true, "terminating": false },
            "nodeName": "node-a",
            "targetRef": { "kind": "Pod", "name": "web-1", "namespace": "default", "uid": "uid-web-1" }
        }],
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }]
    })
}

#[tokio::test]
async fn a_new_endpoint_slice_is_created_with_generate_name_and_the_result_is_returned() {
    let (writer, mut handle) = writer();
    let object = slice_json(None, None);
    let write = Write::Create(Object::EndpointSlice(std::sync::Arc::new(
        serde_json::from_value(object.clone()).unwrap(),
    )));
    let reply = slice_json(Some("web-x7k2p"), Some("41"));
    let server = tokio::spawn(async move {
        expect_request(
            &mut handle,
            Method::POST,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?&fieldManager=portico",
            "application/json",
            reply,
        )
        .await
    });
    let written = tokio::time::timeout(Duration::from_secs(1), writer.write(&write))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.await.unwrap(), object);
    match written {
        portico_controllers::Written::Object(Object::EndpointSlice(s)) => {
            assert_eq!(
                s.metadata.name.as_deref(),
                Some("web-x7k2p"),
                "the writer returns what the API stored"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn an_endpoint_slice_update_replaces_it_at_its_resource_version() {
    let (writer, mut handle) = writer();
    let object = slice_json(Some("web-x7k2p"), Some("41"));
    let write = Write::Replace(Object::EndpointSlice(std::sync::Arc::new(
        serde_json::from_value(object.clone()).unwrap(),
    )));
    let reply = slice_json(Some("web-x7k2p"), Some("42"));
    let server = tokio::spawn(async move {
        expect_request(
            &mut handle,
            Method::PUT,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-x7k2p?&fieldManager=portico",
            "application/json",
            reply,
        )
        .await
    });
    run(&writer, &write).await;
    let body = server.await.unwrap();
    assert_eq!(body, object);
    assert_eq!(
        body["metadata"]["resourceVersion"], "41",
        "the update is guarded by the version it replaces"
    );
}

#[tokio::test]
async fn an_endpoint_slice_is_deleted_by_name() {
    let (writer, mut handle) = writer();
    let write = Write::Delete {
        target: slice_target("web-x7k2p"),
    };
    let server = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.expect("no request");
        assert_eq!(request.method(), Method::DELETE);
        assert_eq!(
            request.uri().to_string(),
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-x7k2p?"
        );
        let status =
            json!({ "apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {} });
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
    });
    run(&writer, &write).await;
    server.await.unwrap();
}

/// The lab: pool `lab` and one LoadBalancer Service; the controller's own
/// writes for it.
fn lab_writes() -> Vec<Write> {
    use portico_controllers::lbipam::{Config, LbIpamController};
    use portico_controllers::metrics::LbIpamMetrics;
    let net = portico_controllers::NetworkConfig::parse("10.96.0.0/12", "20.96.0.0/12").unwrap();
    let mut ctrl = LbIpamController::new(Config::default(), &net, LbIpamMetrics::default());
    let pool = portico_crds::IPPool::new(
        "lab",
        portico_crds::IPPoolSpec {
            addresses: vec!["192.168.56.60-192.168.56.70".into()],
            ..Default::default()
        },
    );
    let mut svc = mk_svc("default", "api-tester-lb");
    svc.spec = Some(ServiceSpec {
        type_: Some("LoadBalancer".into()),
        ip_families: Some(vec!["IPv4".into()]),
        ..Default::default()
    });
    ctrl.reset_pools([&pool]);
    ctrl.reset_namespaces(std::iter::empty());
    ctrl.reset_services([&svc]);
    ctrl.flush()
}

#[tokio::test]
async fn a_load_balancer_address_is_applied_to_the_service_status_subresource() {
    let writes = lab_writes();
    let write = writes
        .iter()
        .find(|w| matches!(w, Write::Apply(a) if a.target.kind == portico_controllers::TargetKind::Service))
        .unwrap()
        .clone();
    let (writer, mut handle) = writer();
    let reply = serde_json::to_value(mk_svc("default", "api-tester-lb")).unwrap();
    let server = tokio::spawn(async move {
        expect_request(
            &mut handle,
            Method::PATCH,
            "/api/v1/namespaces/default/services/api-tester-lb/status?&force=true&fieldManager=portico",
            "application/apply-patch+yaml",
            reply,
        )
        .await
    });
    run(&writer, &write).await;
    let body = server.await.unwrap();
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "Service");
    assert_eq!(
        body["metadata"],
        json!({ "name": "api-tester-lb", "namespace": "default" })
    );
    assert_eq!(
        body["status"]["loadBalancer"],
        json!({ "ingress": [{ "ip": "192.168.56.60", "ipMode": "VIP" }] })
    );
    let c = &body["status"]["conditions"][0];
    assert_eq!(c["type"], "portico.dev/IPAllocated");
    assert_eq!(c["status"], "True");
    assert_eq!(c["reason"], "IPAllocated");
    assert_eq!(c["message"], "192.168.56.60 from pool lab");
    assert!(c["lastTransitionTime"].is_string());
    assert_eq!(
        body.as_object().unwrap().len(),
        4,
        "nothing but what Portico owns: {body}"
    );
}

#[tokio::test]
async fn a_pool_status_is_applied_to_the_cluster_scoped_ippool() {
    let writes = lab_writes();
    let write = writes
        .iter()
        .find(|w| matches!(w, Write::Apply(a) if a.target.kind == portico_controllers::TargetKind::IPPool))
        .unwrap()
        .clone();
    let (writer, mut handle) = writer();
    let server = tokio::spawn(async move {
        expect_request(
            &mut handle,
            Method::PATCH,
            "/apis/portico.dev/v1alpha1/ippools/lab/status?&force=true&fieldManager=portico",
            "application/apply-patch+yaml",
            json!({ "apiVersion": "portico.dev/v1alpha1", "kind": "IPPool", "metadata": { "name": "lab" }, "spec": { "addresses": [] } }),
        )
        .await
    });
    run(&writer, &write).await;
    let body = server.await.unwrap();
    assert_eq!(body["kind"], "IPPool");
    assert_eq!(body["status"]["used"], 1);
    assert_eq!(body["status"]["free"], 10);
    assert_eq!(
        body["status"]["ipv4"],
        json!({ "total": 11, "used": 1, "free": 10 })
    );
    let types: Vec<&str> = body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Ready", "Conflict"]);
}

#[tokio::test]
async fn a_cluster_ip_the_api_server_allocated_itself_is_adopted_with_an_event() {
    use portico_controllers::clusterip::{ClusterIpController, Mode};
    use portico_controllers::metrics::ClusterIpMetrics;
    let net = portico_controllers::NetworkConfig::parse("10.96.0.0/12", "10.244.0.0/16").unwrap();
    let mut index = ClusterIpController::new(&net, Mode::Audit, ClusterIpMetrics::default())
        .unwrap()
        .with_adoption_events(true);
    index.reset(std::iter::empty());
    let mut svc = mk_svc("default", "web");
    svc.spec = Some(ServiceSpec {
        cluster_ip: Some("10.96.44.4".into()),
        cluster_ips: Some(vec!["10.96.44.4".into()]),
        ..Default::default()
    });
    let writes = index.apply(&svc);
    assert_eq!(writes.len(), 1);
    let (writer, mut handle) = writer();
    let server = tokio::spawn(async move { expect_event(&mut handle).await });
    run(&writer, &writes[0]).await;
    let body = server.await.unwrap();
    assert_eq!(body["type"], "Normal");
    assert_eq!(body["reason"], "ClusterIPAdopted");
    assert_eq!(body["action"], "Adopt");
    assert!(
        body["note"]
            .as_str()
            .unwrap()
            .starts_with("ClusterIPs 10.96.44.4 were not handed out by Portico")
    );
    assert_eq!(body["regarding"]["name"], "web");
}

#[tokio::test]
async fn a_node_agent_announcing_an_address_applies_announced_by_with_its_own_manager_and_reports_it()
 {
    let (mock, mut handle) = pair::<Request<Body>, Response<Body>>();
    let writer = ApiWriter::for_node(Client::new(mock, "default"), "n2");
    let svc = mk_svc("default", "web");
    let annotations = [("portico.dev/announced-by".to_owned(), "n2".to_owned())].into();
    let apply = Write::annotate_service("default", "web", &annotations);
    let event = Write::event(
        &svc,
        false,
        "L2Announcing",
        "Announce",
        "192.168.56.60 announced by n2 (was n1)",
    );
    let reply = serde_json::to_value(&svc).unwrap();
    let server = tokio::spawn(async move {
        let patch = expect_request(
            &mut handle,
            Method::PATCH,
            "/api/v1/namespaces/default/services/web?&force=true&fieldManager=portico-node",
            "application/apply-patch+yaml",
            reply,
        )
        .await;
        (patch, expect_event(&mut handle).await)
    });
    run(&writer, &apply).await;
    run(&writer, &event).await;
    let (patch, event) = server.await.unwrap();
    assert_eq!(
        patch,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "annotations": { "portico.dev/announced-by": "n2" }
            }
        })
    );
    assert_eq!(event["reason"], "L2Announcing");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["note"], "192.168.56.60 announced by n2 (was n1)");
    assert_eq!(event["reportingController"], "portico.dev/node");
    assert_eq!(event["reportingInstance"], "n2");
}

/// Answers the next request with `code` (a Kubernetes Status body when it
/// is an error); returns its method, path and body.
async fn answer_with(handle: &mut ApiHandle, code: u16) -> (Method, String, Value) {
    let (request, send) = handle
        .next_request()
        .await
        .expect("the writer sent no request");
    let method = request.method().clone();
    let path = request.uri().to_string();
    let body: Value =
        serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
    let reply = if code == 200 {
        body.clone()
    } else {
        json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "injected", "reason": "InternalError", "code": code
        })
    };
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    (method, path, body)
}

/// The node agent's annotation and Event writes go through
/// `write_in_order`: a write the API server fails (500) is sent again after
/// a pause, before the next one, so it is not lost and a newer write never
/// lands first; one it refuses for good (404) is dropped.
#[tokio::test(start_paused = true)]
async fn writes_in_order_retry_a_failed_write_before_the_next_and_drop_a_refused_one() {
    let (writer, mut handle) = writer();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(portico_controllers::write_in_order(
        writer,
        rx,
        Duration::from_millis(500),
    ));
    let annotate = |value: &str| {
        Write::annotate_service(
            "default",
            "web",
            &[("portico.dev/announced-by".to_owned(), value.to_owned())].into(),
        )
    };
    tx.send(annotate("n1")).unwrap();
    tx.send(annotate("n2")).unwrap();
    tx.send(annotate("n3")).unwrap();
    drop(tx);

    let path = "/api/v1/namespaces/default/services/web?&force=true&fieldManager=portico";
    let announced = |b: &Value| b["metadata"]["annotations"]["portico.dev/announced-by"].clone();
    let (m, p, first) = answer_with(&mut handle, 500).await;
    assert_eq!((m, p.as_str()), (Method::PATCH, path));
    assert_eq!(announced(&first), "n1");
    let (_, _, again) = answer_with(&mut handle, 503).await;
    assert_eq!(
        announced(&again),
        "n1",
        "the failed write again, not the next"
    );
    let (_, _, third) = answer_with(&mut handle, 200).await;
    assert_eq!(announced(&third), "n1");
    let (_, _, next) = answer_with(&mut handle, 404).await;
    assert_eq!(announced(&next), "n2");
    let (_, _, last) = answer_with(&mut handle, 200).await;
    assert_eq!(
        announced(&last),
        "n3",
        "a refused write is dropped, not retried"
    );
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the writer ends when the queue does")
        .unwrap();
}
