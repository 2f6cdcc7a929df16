//! What reconcilers ask to be written, and the writer that sends it to the
//! Kubernetes API.
//!
//! Reconcilers return [`Write`]s. In a cluster [`ApiWriter`] carries them out
//! (server-side apply with Portico's field manager, Events through the events
//! API); in `portico local` the binary merges them into its in-memory stores.

use crate::Result;
use crate::k8s::KeyOf;
use crate::k8s::{EndpointSlice, ObjectReference, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use portico_crds::names::{EVENT_REPORTER, FIELD_MANAGER, NODE_EVENT_REPORTER, NODE_FIELD_MANAGER};
use portico_crds::{ClusterIPRange, IPPool, L2Announcement};
use serde_json::Value;
use std::sync::Arc;

/// A write that a reconciler decided on.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Server-side apply of a partial object.
    Apply(Apply),
    /// Creation of a whole object (its name may come from `generateName`).
    Create(Object),
    /// Replacement of a whole object: an update guarded by the
    /// `resourceVersion` the object carries.
    Replace(Object),
    /// Deletion of an object.
    Delete {
        /// The object deleted.
        target: Target,
    },
    /// An Event about an object.
    Event(EventRecord),
}

/// The kinds of object reconcilers write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `portico.dev/v1alpha1` IPPool (cluster-scoped: empty namespace).
    IPPool,
    /// `portico.dev/v1alpha1` ClusterIPRange (cluster-scoped: empty namespace).
    ClusterIPRange,
    /// `portico.dev/v1alpha1` L2Announcement (cluster-scoped: empty namespace).
    L2Announcement,
}

/// A whole object that reconcilers create or replace, or that a writer
/// stored. Typed, not JSON: a sync of a large cluster creates thousands of
/// them; shared, so a stored object fed back to the reconcilers is not
/// copied.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A Service.
    Service(Arc<Service>),
    /// An EndpointSlice.
    EndpointSlice(Arc<EndpointSlice>),
    /// An IPPool (as stored after a status write).
    IPPool(Arc<IPPool>),
    /// A ClusterIPRange (as stored after a status write).
    ClusterIPRange(Arc<ClusterIPRange>),
    /// An L2Announcement (as stored after a status write).
    L2Announcement(Arc<L2Announcement>),
}

impl Object {
    /// The target this object is (its name is empty when generated).
    pub fn target(&self) -> Target {
        let (kind, meta, namespaced) = match self {
            Object::Service(o) => (TargetKind::Service, &o.metadata, true),
            Object::EndpointSlice(o) => (TargetKind::EndpointSlice, &o.metadata, true),
            Object::IPPool(o) => (TargetKind::IPPool, &o.metadata, false),
            Object::ClusterIPRange(o) => (TargetKind::ClusterIPRange, &o.metadata, false),
            Object::L2Announcement(o) => (TargetKind::L2Announcement, &o.metadata, false),
        };
        let namespace = match (namespaced, &meta.namespace) {
            (false, _) => String::new(),
            (true, Some(ns)) => ns.clone(),
            (true, None) => "default".to_owned(),
        };
        Target {
            kind,
            namespace,
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// What a write did, as the API server answered: the object written, or the
/// name of the object deleted. Writers feed this back into the reconcilers,
/// so they never act on a store that has not seen their own writes yet.
#[derive(Clone, Debug, PartialEq)]
pub enum Written {
    /// The object as stored after the write.
    Object(Object),
    /// The object was deleted.
    Deleted(Target),
    /// Nothing to feed back (Events).
    Nothing,
}

/// The object a write is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Its kind.
    pub kind: TargetKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// A server-side apply: `patch` is the partial object Portico owns, with
/// `apiVersion`, `kind` and `metadata.name`/`namespace`.
#[derive(Clone, Debug, PartialEq)]
pub struct Apply {
    /// The object patched.
    pub target: Target,
    /// Whether the patch goes to the `status` subresource.
    pub status: bool,
    /// The partial object.
    pub patch: Value,
}

/// An Event about one object.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    /// The object the Event is about.
    pub regarding: ObjectReference,
    /// `true` for `Warning`, `false` for `Normal`.
    pub warning: bool,
    /// Short PascalCase reason.
    pub reason: String,
    /// Human-readable message.
    pub note: String,
    /// What the reconciler did (PascalCase).
    pub action: String,
}

impl Write {
    /// A server-side apply of a Service's spec fields.
    pub fn apply_service(svc: &Service, spec: Value) -> Write {
        Write::Apply(Apply {
            target: Target::service(svc),
            status: false,
            patch: service_patch(svc, "spec", spec),
        })
    }

    /// A server-side apply of a Service's status fields.
    pub fn apply_service_status(svc: &Service, status: Value) -> Write {
        Write::Apply(Apply {
            target: Target::service(svc),
            status: true,
            patch: service_patch(svc, "status", status),
        })
    }

    /// A server-side apply of annotations on a Service (what the node
    /// agents write, e.g. `portico.dev/announced-by`).
    pub fn annotate_service(
        namespace: &str,
        name: &str,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Write {
        Write::Apply(Apply {
            target: Target {
                kind: TargetKind::Service,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            status: false,
            patch: serde_json::json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": { "name": name, "namespace": namespace, "annotations": annotations },
            }),
        })
    }

    /// An Event about `obj`.
    pub fn event<K: Resource<DynamicType = ()>>(
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) -> Write {
        Write::Event(EventRecord {
            regarding: obj.object_ref(&()),
            warning,
            reason: reason.to_owned(),
            note: note.into(),
            action: action.to_owned(),
        })
    }
}

impl Target {
    /// The target for a Service.
    pub fn service(svc: &Service) -> Target {
        let key = crate::k8s::Key::of(svc);
        Target {
            kind: TargetKind::Service,
            namespace: key.namespace,
            name: key.name,
        }
    }
}

fn service_patch(svc: &Service, field: &str, value: Value) -> Value {
    let key = crate::k8s::Key::of(svc);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": key.name, "namespace": key.namespace },
        field: value,
    })
}

/// Carries [`Write`]s out and says what each did. Two implementations:
/// [`ApiWriter`] (the Kubernetes API) and `portico local`'s world (its
/// in-memory stores). Drivers feed every result back to
/// [`Reconcilers::written`](crate::Reconcilers::written).
pub trait Writer {
    /// Carries out one write.
    fn write(&mut self, write: &Write) -> impl Future<Output = Result<Written>> + Send;
}

impl Writer for ApiWriter {
    fn write(&mut self, write: &Write) -> impl Future<Output = Result<Written>> + Send {
        ApiWriter::write(self, write)
    }
}

/// A write the API server does not answer within this long has failed (for
/// a passing reason): a hung request must not hold every other write.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A writer whose writes fail after [`WRITE_TIMEOUT`] without an answer.
pub(crate) struct Timed<W>(pub(crate) W);

impl<W: Writer + Send> Writer for Timed<W> {
    async fn write(&mut self, write: &Write) -> Result<Written> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.0.write(write)).await {
            Ok(result) => result,
            Err(_) => Err(crate::Error::Timeout(WRITE_TIMEOUT)),
        }
    }
}

/// Carries [`Write`]s out against the Kubernetes API.
#[derive(Clone)]
pub struct ApiWriter {
    client: Client,
    recorder: Recorder,
    field_manager: &'static str,
}

impl ApiWriter {
    /// A writer that reports Events as `instance` (usually the pod name).
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: EVENT_REPORTER.to_owned(),
            instance,
        };
        ApiWriter {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            field_manager: FIELD_MANAGER,
        }
    }

    /// The writer of a node agent (`instance`: the node's name): its own
    /// field manager, so its applies never take fields from the
    /// controllers', and its own Event reporter.
    pub fn for_node(client: Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: NODE_EVENT_REPORTER.to_owned(),
            instance: Some(instance.to_owned()),
        };
        ApiWriter {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            field_manager: NODE_FIELD_MANAGER,
        }
    }

    /// Sends one write: server-side apply (field manager `portico`, or
    /// `portico-node` for a node agent's writer; forced,
    /// since Portico owns these fields), create, replace, delete, or an Event.
    pub async fn write(&self, write: &Write) -> Result<Written> {
        match write {
            Write::Apply(apply) => match apply.target.kind {
                TargetKind::Service => self
                    .apply::<Service>(apply)
                    .await
                    .map(|o| Object::Service(Arc::new(o))),
                TargetKind::EndpointSlice => self
                    .apply::<EndpointSlice>(apply)
                    .await
                    .map(|o| Object::EndpointSlice(Arc::new(o))),
                TargetKind::IPPool => self
                    .apply_cluster_scoped::<IPPool>(apply)
                    .await
                    .map(|o| Object::IPPool(Arc::new(o))),
                TargetKind::ClusterIPRange => self
                    .apply_cluster_scoped::<ClusterIPRange>(apply)
                    .await
                    .map(|o| Object::ClusterIPRange(Arc::new(o))),
                TargetKind::L2Announcement => self
                    .apply_cluster_scoped::<L2Announcement>(apply)
                    .await
                    .map(|o| Object::L2Announcement(Arc::new(o))),
            }
            .map(Written::Object),
            Write::Create(object) => self.create(object).await.map(Written::Object),
            Write::Replace(object) => self.replace(object).await.map(Written::Object),
            Write::Delete { target } => {
                let params = DeleteParams::default();
                match target.kind {
                    TargetKind::Service => {
                        self.api::<Service>(target)
                            .delete(&target.name, &params)
                            .await?;
                    }
                    TargetKind::EndpointSlice => {
                        self.api::<EndpointSlice>(target)
                            .delete(&target.name, &params)
                            .await?;
                    }
                    TargetKind::IPPool => {
                        self.all::<IPPool>().delete(&target.name, &params).await?;
                    }
                    TargetKind::ClusterIPRange => {
                        self.all::<ClusterIPRange>()
                            .delete(&target.name, &params)
                            .await?;
                    }
                    TargetKind::L2Announcement => {
                        self.all::<L2Announcement>()
                            .delete(&target.name, &params)
                            .await?;
                    }
                }
                Ok(Written::Deleted(target.clone()))
            }
            Write::Event(ev) => {
                let event = Event {
                    type_: if ev.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: ev.reason.clone(),
                    note: Some(ev.note.clone()),
                    action: ev.action.clone(),
                    secondary: None,
                };
                self.recorder.publish(&event, &ev.regarding).await?;
                Ok(Written::Nothing)
            }
        }
    }

    /// Server-side apply to a cluster-scoped object (or its status).
    async fn apply_cluster_scoped<K>(&self, apply: &Apply) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let params = PatchParams::apply(self.field_manager).force();
        let patch = Patch::Apply(&apply.patch);
        Ok(if apply.status {
            api.patch_status(&apply.target.name, &params, &patch)
                .await?
        } else {
            api.patch(&apply.target.name, &params, &patch).await?
        })
    }

    /// Creates a whole object; returns it as stored.
    async fn create(&self, object: &Object) -> Result<Object> {
        let params = post_params();
        let t = object.target();
        Ok(match object {
            Object::Service(o) => {
                Object::Service(Arc::new(self.api(&t).create(&params, o.as_ref()).await?))
            }
            Object::EndpointSlice(o) => {
                Object::EndpointSlice(Arc::new(self.api(&t).create(&params, o.as_ref()).await?))
            }
            Object::IPPool(o) => {
                Object::IPPool(Arc::new(self.all().create(&params, o.as_ref()).await?))
            }
            Object::ClusterIPRange(o) => {
                Object::ClusterIPRange(Arc::new(self.all().create(&params, o.as_ref()).await?))
            }
            Object::L2Announcement(o) => {
                Object::L2Announcement(Arc::new(self.all().create(&params, o.as_ref()).await?))
            }
        })
    }

    /// Replaces a whole object (guarded by its `resourceVersion`); returns
    /// it as stored.
    async fn replace(&self, object: &Object) -> Result<Object> {
        let params = post_params();
        let t = object.target();
        let n = t.name.as_str();
        Ok(match object {
            Object::Service(o) => Object::Service(Arc::new(
                self.api(&t).replace(n, &params, o.as_ref()).await?,
            )),
            Object::EndpointSlice(o) => Object::EndpointSlice(Arc::new(
                self.api(&t).replace(n, &params, o.as_ref()).await?,
            )),
            Object::IPPool(o) => {
                Object::IPPool(Arc::new(self.all().replace(n, &params, o.as_ref()).await?))
            }
            Object::ClusterIPRange(o) => {
                Object::ClusterIPRange(Arc::new(self.all().replace(n, &params, o.as_ref()).await?))
            }
            Object::L2Announcement(o) => {
                Object::L2Announcement(Arc::new(self.all().replace(n, &params, o.as_ref()).await?))
            }
        })
    }

    fn all<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>,
    {
        Api::all(self.client.clone())
    }

    fn api<K>(&self, target: &Target) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &target.namespace)
    }

    async fn apply<K>(&self, apply: &Apply) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize,
    {
        let params = PatchParams::apply(self.field_manager).force();
        let patch = Patch::Apply(&apply.patch);
        let api = self.api::<K>(&apply.target);
        Ok(if apply.status {
            api.patch_status(&apply.target.name, &params, &patch)
                .await?
        } else {
            api.patch(&apply.target.name, &params, &patch).await?
        })
    }
}

/// Creates and replaces carry Portico's field manager, so `managedFields`
/// say who wrote what.
fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
}

/// Carries writes out one after another, in the order given, retrying a
/// write that fails for a passing reason (see [`crate::Error::is_transient`])
/// after a pause that doubles from `first_pause` up to 30 s (longer if the
/// server asks, with `Retry-After`), so that a
/// failed write is not lost and a newer write never lands before an older
/// one. A write the API refuses for good is logged and dropped. Ends when
/// every sender is gone and the queue is empty.
pub async fn write_in_order(
    writer: ApiWriter,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Write>,
    first_pause: std::time::Duration,
) {
    const MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(30);
    let mut writer = Timed(writer);
    while let Some(w) = queue.recv().await {
        let mut pause = first_pause;
        loop {
            match writer.write(&w).await {
                Ok(_) => break,
                Err(e) if e.is_transient() => {
                    let wait = e.retry_pause(pause);
                    tracing::warn!(error = %e, pause = ?wait, "write failed; retrying");
                    tokio::time::sleep(wait).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?w, "write refused; dropped");
                    break;
                }
            }
        }
    }
}
