//! What Portico's tests share.
//!
//! - [`root`]: tests that need root or a tool run when they can, and must
//!   in CI (`PORTICO_REQUIRE_ROOT_TESTS=1`).
//! - [`netns`]: network namespaces for real-packet tests; [`lab`]: a node,
//!   a client and pods with servers in them, wired together.
//! - [`clock`]: a clock the test moves; [`logs`]: what a test logged.
//! - [`objects`]: builders of Nodes, Services and EndpointSlices.
//! - [`MockApi`]: a small in-memory Kubernetes API server behind the real
//!   `kube::Client` (through `tower-test`): lists, watches (with resource
//!   versions, label selectors, metadata-only views and `410 Gone`),
//!   creates, replaces, server-side applies (as JSON merge patches),
//!   deletes and Events. Every request is logged, so tests assert the
//!   exact requests a component sends; faults are injected per request.

#![forbid(unsafe_code)]

pub mod clock;
pub mod lab;
pub mod logs;
pub mod netns;
pub mod objects;
pub mod root;

pub use clock::FakeClock;
pub use netns::{Netns, in_netns};
pub use root::{ready_or_skip, tools_or_skip};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tower_test::mock::{Handle, SendResponse};

/// One request the client sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Logged {
    /// Its method.
    pub method: Method,
    /// Its path, without the query.
    pub path: String,
    /// Its query, decoded, as `key=value` pairs in order.
    pub query: Vec<(String, String)>,
    /// Its JSON body, if any.
    pub body: Option<Value>,
}

impl Logged {
    /// Whether this is a write (not a list or watch).
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }

    /// Whether this is a watch.
    pub fn is_watch(&self) -> bool {
        self.param("watch") == Some("true")
    }

    /// A query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Where a request goes: a collection (`/api/v1/services` for every
/// namespace), and within it an object and a subresource.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let prefix = if segs.first() == Some(&"api") { 2 } else { 3 };
    let base = segs[..prefix.min(segs.len())].join("/");
    let rest = &segs[prefix.min(segs.len())..];
    let (namespace, rest) = if rest.len() >= 3 && rest[0] == "namespaces" {
        (Some(rest[1].to_owned()), &rest[2..])
    } else {
        (None, rest)
    };
    Route {
        collection: format!("/{base}/{}", rest.first().copied().unwrap_or_default()),
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(b) = hex {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// `k=v,k2=v2` selectors, the only kind Portico uses.
fn selected(selector: Option<&str>, obj: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => obj["metadata"]["labels"][k].as_str() == Some(v),
        None => false,
    })
}

fn key_of(obj: &Value) -> String {
    let meta = &obj["metadata"];
    match meta["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", meta["name"].as_str().unwrap_or_default()),
        None => meta["name"].as_str().unwrap_or_default().to_owned(),
    }
}

/// A watch request waiting for events.
struct Parked {
    collection: String,
    since: u64,
    selector: Option<String>,
    metadata_only: bool,
    send: SendResponse<Response<Body>>,
}

/// A fault for the next request that matches.
struct Fault {
    method: Method,
    path_contains: String,
    /// An error status, or `None`: no answer at all (a hung request).
    code: Option<u16>,
    /// Run when the request arrives, before anything else happens.
    then: Option<Box<dyn FnOnce() + Send>>,
}

#[derive(Default)]
struct State {
    version: u64,
    /// Objects by collection, then `namespace/name`.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Every change, by collection: (version, type, object).
    history: BTreeMap<String, Vec<(u64, &'static str, Value)>>,
    /// Collections whose watches from this version or older are gone
    /// (`410 Gone`), by collection.
    expired: BTreeMap<String, u64>,
    parked: Vec<Parked>,
    faults: VecDeque<Fault>,
    /// Requests never answered (kept, so the client keeps waiting).
    hung: Vec<SendResponse<Response<Body>>>,
    log: Vec<Logged>,
    generated: u64,
    /// Fixed answers by path (a node's proxied endpoint, say).
    canned: BTreeMap<String, (u16, String)>,
}

/// An in-memory API server. See the crate documentation.
#[derive(Clone)]
pub struct MockApi {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for MockApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockApi").finish_non_exhaustive()
    }
}

/// How long [`MockApi::wait_for`] waits (in tokio's time; paused in tests,
/// so this never costs real time).
pub const WAIT: Duration = Duration::from_secs(300);

impl MockApi {
    /// A server holding `objects` (each with `apiVersion`, `kind` and
    /// metadata), and a client that talks to it.
    pub fn start(objects: impl IntoIterator<Item = Value>) -> (MockApi, Client) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = MockApi {
            state: Arc::new(Mutex::new(State::default())),
            changed: Arc::new(Notify::new()),
        };
        for obj in objects {
            api.put(obj);
        }
        tokio::spawn(api.clone().serve(handle));
        (api, Client::new(service, "default"))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn serve(self, mut handle: Handle<Request<Body>, Response<Body>>) {
        while let Some((request, send)) = handle.next_request().await {
            self.answer(request, send).await;
            self.changed.notify_waiters();
        }
    }

    async fn answer(&self, request: Request<Body>, send: SendResponse<Response<Body>>) {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let logged = Logged {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: query(parts.uri.query()),
            body: body.clone(),
        };
        let metadata_only = parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("PartialObjectMetadata"));
        let route = route(&logged.path);
        let mut state = self.lock();
        state.log.push(logged.clone());
        if let Some(i) = state
            .faults
            .iter()
            .position(|f| f.method == logged.method && logged.path.contains(&f.path_contains))
        {
            let mut fault = state.faults.remove(i).unwrap_or_else(|| unreachable!());
            if let Some(then) = fault.then.take() {
                then();
            }
            match fault.code {
                Some(code) => send.send_response(status(code, "injected fault")),
                None => state.hung.push(send),
            }
            return;
        }
        if let Some((code, body)) = state.canned.get(&logged.path) {
            let code = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            send.send_response(raw(code, body.clone()));
            return;
        }
        match (logged.method.clone(), body) {
            (Method::GET, _) if logged.is_watch() => {
                let since = logged
                    .param("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if state
                    .expired
                    .get(&route.collection)
                    .is_some_and(|at| since <= *at)
                {
                    send.send_response(gone());
                    return;
                }
                state.parked.push(Parked {
                    collection: route.collection,
                    since,
                    selector: logged.param("labelSelector").map(str::to_owned),
                    metadata_only,
                    send,
                });
                state.release();
            }
            (Method::GET, _) => {
                let selector = logged.param("labelSelector");
                let items: Vec<Value> = state
                    .objects
                    .get(&route.collection)
                    .into_iter()
                    .flat_map(|m| m.values())
                    .filter(|o| selected(selector, o))
                    .map(|o| view(o, metadata_only))
                    .collect();
                let kind = if metadata_only {
                    "PartialObjectMetadataList"
                } else {
                    "List"
                };
                send.send_response(ok(&json!({
                    "apiVersion": "v1",
                    "kind": kind,
                    "metadata": { "resourceVersion": state.version.to_string() },
                    "items": items,
                })));
            }
            (Method::POST, Some(mut obj)) => {
                if route.collection.ends_with("/events") {
                    send.send_response(ok(&obj));
                    return;
                }
                if let Some(ns) = &route.namespace {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                if obj["metadata"]["name"].is_null() {
                    state.generated += 1;
                    let prefix = obj["metadata"]["generateName"].as_str().unwrap_or("obj-");
                    obj["metadata"]["name"] = json!(format!("{prefix}{:05}", state.generated));
                }
                let key = key_of(&obj);
                if state
                    .objects
                    .get(&route.collection)
                    .is_some_and(|m| m.contains_key(&key))
                {
                    send.send_response(status(409, "already exists"));
                    return;
                }
                let stored = state.store(&route.collection, obj, "ADDED");
                send.send_response(ok(&stored));
            }
            (Method::PUT, Some(obj)) => {
                let key = object_key(&route);
                let current = state.get(&route.collection, &key);
                let Some(current) = current else {
                    send.send_response(status(404, "not found"));
                    return;
                };
                if obj["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    send.send_response(status(409, "the object has been modified"));
                    return;
                }
                let stored = state.store(&route.collection, obj, "MODIFIED");
                send.send_response(ok(&stored));
            }
            (Method::PATCH, Some(patch)) => {
                let key = object_key(&route);
                let Some(mut current) = state.get(&route.collection, &key) else {
                    send.send_response(status(404, "not found"));
                    return;
                };
                json_patch::merge(&mut current, &patch);
                let stored = state.store(&route.collection, current, "MODIFIED");
                send.send_response(ok(&stored));
            }
            (Method::DELETE, _) => {
                let key = object_key(&route);
                match state.remove(&route.collection, &key) {
                    Some(_) => send.send_response(ok(&json!({
                        "apiVersion": "v1", "kind": "Status", "status": "Success",
                    }))),
                    None => send.send_response(status(404, "not found")),
                }
            }
            _ => send.send_response(status(400, "bad request")),
        }
    }

    /// Adds or replaces an object, as another client would (its watchers
    /// hear of it).
    pub fn put(&self, obj: Value) {
        let collection = collection_of(&obj);
        let mut state = self.lock();
        let kind = if state.get(&collection, &key_of(&obj)).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.store(&collection, obj, kind);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Deletes an object, as another client would.
    pub fn delete(&self, obj: &Value) {
        let mut state = self.lock();
        state.remove(&collection_of(obj), &key_of(obj));
        drop(state);
        self.changed.notify_waiters();
    }

    /// The stored object of `kind`-like `template` (apiVersion, kind,
    /// metadata.name and namespace).
    pub fn get(&self, template: &Value) -> Option<Value> {
        self.lock().get(&collection_of(template), &key_of(template))
    }

    /// Every stored object of one collection (e.g.
    /// `/apis/discovery.k8s.io/v1/endpointslices`).
    pub fn objects(&self, collection: &str) -> Vec<Value> {
        self.lock()
            .objects
            .get(collection)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Ends the open watches of a collection with `410 Gone` (the resource
    /// version is too old), so their clients must list again.
    pub fn expire_watches(&self, collection: &str) {
        let mut state = self.lock();
        let (expired, kept) = std::mem::take(&mut state.parked)
            .into_iter()
            .partition(|p: &Parked| p.collection == collection);
        state.parked = kept;
        // Events before now are no longer served either: a watch from any
        // version up to now (one in flight included) is gone; a new list
        // gives a later one.
        state.history.remove(collection);
        let now = state.version;
        state.expired.insert(collection.to_owned(), now);
        state.version += 1;
        drop(state);
        for p in expired {
            p.send.send_response(gone());
        }
    }

    /// The next request of `method` whose path contains `path_contains`
    /// fails with `code` (a 429 asks for [`RETRY_AFTER_SECONDS`]).
    pub fn fail_next(&self, method: Method, path_contains: &str, code: u16) {
        self.lock().faults.push_back(Fault {
            method,
            path_contains: path_contains.to_owned(),
            code: Some(code),
            then: None,
        });
    }

    /// Every request for `path` is answered `code` with `body`, as they
    /// are (the API server proxying to a node's endpoint, say).
    pub fn canned(&self, path: &str, code: u16, body: impl Into<String>) {
        self.lock()
            .canned
            .insert(path.to_owned(), (code, body.into()));
    }

    /// The next request of `method` whose path contains `path_contains`
    /// is never answered.
    pub fn hang_next(&self, method: Method, path_contains: &str) {
        self.hang_next_then(method, path_contains, || {});
    }

    /// The same, and `then` runs the moment that request arrives (while
    /// its client waits): a fault that happens during a write.
    pub fn hang_next_then(
        &self,
        method: Method,
        path_contains: &str,
        then: impl FnOnce() + Send + 'static,
    ) {
        self.lock().faults.push_back(Fault {
            method,
            path_contains: path_contains.to_owned(),
            code: None,
            then: Some(Box::new(then)),
        });
    }

    /// Cuts the open watches of a collection in the middle of an event:
    /// their clients read half a JSON object, then the end of the stream.
    pub fn cut_watches(&self, collection: &str) {
        let mut state = self.lock();
        let (cut, kept) = std::mem::take(&mut state.parked)
            .into_iter()
            .partition(|p: &Parked| p.collection == collection);
        state.parked = kept;
        drop(state);
        for p in cut {
            let half = r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"#;
            p.send.send_response(raw(StatusCode::OK, half.to_owned()));
        }
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// Every write (not a list or watch) so far.
    pub fn writes(&self) -> Vec<Logged> {
        self.lock()
            .log
            .iter()
            .filter(|l| l.is_write())
            .cloned()
            .collect()
    }

    /// Waits until `done` holds for the request log; panics with the log
    /// after [`WAIT`] of tokio's time.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Logged]) -> bool) {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.changed.notified();
                // The lock is not held while `done` runs: it may ask the
                // server too.
                let log = self.lock().log.clone();
                if done(&log) {
                    return;
                }
                notified.await;
            }
        })
        .await;
        if waited.is_err() {
            panic!("waited for {what}; the requests were:\n{:#?}", self.log());
        }
    }
}

impl State {
    fn get(&self, collection: &str, key: &str) -> Option<Value> {
        self.objects.get(collection)?.get(key).cloned()
    }

    fn store(&mut self, collection: &str, mut obj: Value, kind: &'static str) -> Value {
        self.version += 1;
        let key = key_of(&obj);
        obj["metadata"]["resourceVersion"] = json!(self.version.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", key.replace('/', "-")));
        }
        self.objects
            .entry(collection.to_owned())
            .or_default()
            .insert(key, obj.clone());
        self.history
            .entry(collection.to_owned())
            .or_default()
            .push((self.version, kind, obj.clone()));
        self.release();
        obj
    }

    fn remove(&mut self, collection: &str, key: &str) -> Option<Value> {
        let mut obj = self.objects.get_mut(collection)?.remove(key)?;
        self.version += 1;
        obj["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.history
            .entry(collection.to_owned())
            .or_default()
            .push((self.version, "DELETED", obj.clone()));
        self.release();
        Some(obj)
    }

    /// Answers the parked watches that have events to hear. Each answer
    /// ends its watch; the client watches again from the last version.
    fn release(&mut self) {
        let parked = std::mem::take(&mut self.parked);
        for p in parked {
            let events: Vec<String> = self
                .history
                .get(&p.collection)
                .into_iter()
                .flatten()
                .filter(|(v, _, o)| *v > p.since && selected(p.selector.as_deref(), o))
                .map(|(_, kind, o)| {
                    json!({ "type": kind, "object": view(o, p.metadata_only) }).to_string() + "\n"
                })
                .collect();
            if events.is_empty() {
                self.parked.push(p);
            } else {
                p.send.send_response(raw(StatusCode::OK, events.concat()));
            }
        }
    }
}

fn object_key(route: &Route) -> String {
    let name = route.name.clone().unwrap_or_default();
    match &route.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

/// The collection an object belongs in, from its `apiVersion` and `kind`.
fn collection_of(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
    let kind = obj["kind"].as_str().unwrap_or_default().to_lowercase();
    let plural = if kind.ends_with("ss") {
        format!("{kind}es")
    } else if kind.ends_with('y') {
        format!("{}ies", &kind[..kind.len() - 1])
    } else {
        format!("{kind}s")
    };
    if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    }
}

/// An object as a client asked for it: whole, or its metadata only.
fn view(obj: &Value, metadata_only: bool) -> Value {
    if metadata_only {
        json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": obj["metadata"],
        })
    } else {
        obj.clone()
    }
}

/// A watch that ends with `410 Gone` (its resource version is too old).
fn gone() -> Response<Body> {
    let event = json!({
        "type": "ERROR",
        "object": { "apiVersion": "v1", "kind": "Status", "status": "Failure",
                    "code": 410, "reason": "Expired", "message": "too old resource version" },
    });
    raw(StatusCode::OK, format!("{event}\n"))
}

fn raw(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body.into_bytes()));
    *r.status_mut() = code;
    r
}

fn ok(obj: &Value) -> Response<Body> {
    raw(StatusCode::OK, obj.to_string())
}

/// The pause a 429 asks for, as the API server does: a `Retry-After`
/// header and `details.retryAfterSeconds`.
pub const RETRY_AFTER_SECONDS: u32 = 3;

fn status(code: u16, message: &str) -> Response<Body> {
    let mut body = json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "code": code, "message": message,
        "reason": match code { 409 => "Conflict", 404 => "NotFound", 410 => "Expired", 429 => "TooManyRequests", _ => "InternalError" },
    });
    if code == 429 {
        body["details"] = json!({ "retryAfterSeconds": RETRY_AFTER_SECONDS });
    }
    let mut r = raw(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_string(),
    );
    if code == 429 {
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(RETRY_AFTER_SECONDS),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_collections_namespaces_names_and_subresources() {
        assert_eq!(
            route("/api/v1/namespaces/default/services/web/status"),
            Route {
                collection: "/api/v1/services".into(),
                namespace: Some("default".into()),
                name: Some("web".into()),
                subresource: Some("status".into()),
            }
        );
        assert_eq!(route("/api/v1/namespaces").collection, "/api/v1/namespaces");
        assert_eq!(
            route("/apis/portico.dev/v1alpha1/ippools/lab")
                .name
                .as_deref(),
            Some("lab")
        );
        assert_eq!(
            collection_of(&json!({"apiVersion": "portico.dev/v1alpha1", "kind": "ClusterIPRange"})),
            "/apis/portico.dev/v1alpha1/clusteripranges"
        );
        assert_eq!(
            query(Some("&labelSelector=a%2Fb%3Dc&watch=true")),
            [
                ("labelSelector".to_owned(), "a/b=c".to_owned()),
                ("watch".to_owned(), "true".to_owned())
            ]
        );
    }
}
