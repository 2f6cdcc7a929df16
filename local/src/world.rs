//! The in-memory API of `portico local`: one kube-runtime reflector store per
//! kind, fed from the manifests, and the local writer that carries out the
//! reconcilers' writes into those stores.
//!
//! Server-side apply is emulated with k8s-openapi's `DeepMerge`, which merges
//! lists by the same keys as the API server (conditions by `type`, ...).

use crate::load::Manifests;
use crate::stored::{Pods, uid};
use k8s_openapi::DeepMerge;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer as StoreWriter};
use kube::runtime::watcher;
use portico_controllers::k8s::{EndpointSlice, Namespace, Node, Service};
use portico_controllers::{Apply, EventRecord, Object, Target, TargetKind, Write, Writer, Written};
use portico_crds::{ClusterIPRange, IPPool, L2Announcement};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// One kind's store and the writer that feeds it.
pub struct Objects<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    writer: StoreWriter<K>,
    pub store: Store<K>,
}

impl<K> Objects<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    fn new(objects: Vec<K>) -> Self {
        let (store, mut writer) = reflector::store::<K>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for mut obj in objects {
            let meta = obj.meta_mut();
            if meta.uid.is_none() {
                meta.uid = Some(uid(
                    &K::kind(&()),
                    meta.namespace.as_deref(),
                    meta.name.as_deref(),
                ));
            }
            writer.apply_watcher_event(&watcher::Event::InitApply(obj));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        Objects { writer, store }
    }

    /// Every object, sorted by namespace and name.
    pub fn sorted(&self) -> Vec<Arc<K>> {
        let mut all = self.store.state();
        all.sort_by(|a, b| {
            (a.meta().namespace.as_ref(), a.meta().name.as_ref())
                .cmp(&(b.meta().namespace.as_ref(), b.meta().name.as_ref()))
        });
        all
    }
}

impl<K> Objects<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeepMerge
        + DeserializeOwned
        + PartialEq
        + 'static,
{
    /// Merges a server-side apply patch into the object; returns the new
    /// object when it changed.
    fn merge(
        &mut self,
        namespace: &str,
        name: &str,
        patch: &serde_json::Value,
        merge: impl FnOnce(&mut K, K),
    ) -> anyhow::Result<Option<Arc<K>>> {
        let key = object_ref::<K>(namespace, name);
        let Some(current) = self.store.get(&key) else {
            anyhow::bail!("{} {namespace}/{name} does not exist", K::kind(&()));
        };
        let patch: K = serde_json::from_value(patch.clone())?;
        let mut next = (*current).clone();
        merge(&mut next, patch);
        if next == *current {
            return Ok(None);
        }
        self.writer
            .apply_watcher_event(&watcher::Event::Apply(next));
        Ok(self.store.get(&key))
    }
}

impl<K> Objects<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    /// Stores an object as the API server would on create or update: a new
    /// `resourceVersion`, and a `uid` when it has none.
    fn put(&mut self, mut obj: K, version: u64) -> Option<Arc<K>> {
        let meta = obj.meta_mut();
        meta.resource_version = Some(version.to_string());
        if meta.uid.is_none() {
            meta.uid = Some(uid(
                &K::kind(&()),
                meta.namespace.as_deref(),
                meta.name.as_deref(),
            ));
        }
        let key = object_ref::<K>(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        );
        self.writer.apply_watcher_event(&watcher::Event::Apply(obj));
        self.store.get(&key)
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&object_ref::<K>(namespace, name))
    }

    fn remove(&mut self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let old = self.get(namespace, name)?;
        self.writer
            .apply_watcher_event(&watcher::Event::Delete((*old).clone()));
        Some(old)
    }
}

/// The store key of an object; cluster-scoped objects have an empty namespace.
fn object_ref<K: kube::Resource<DynamicType = ()>>(namespace: &str, name: &str) -> ObjectRef<K> {
    let key = ObjectRef::<K>::new(name);
    if namespace.is_empty() {
        key
    } else {
        key.within(namespace)
    }
}

/// The suffix the API server appends to a `generateName`: five characters
/// of its alphabet. Portico derives them from a counter, so a run of
/// `portico local` names its slices the same way every time.
fn generated_suffix(n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Every object `portico local` knows, and the Events recorded so far.
pub struct World {
    pub namespaces: Objects<Namespace>,
    pub nodes: Objects<Node>,
    pub services: Objects<Service>,
    pub pods: Pods,
    pub endpoint_slices: Objects<EndpointSlice>,
    pub ippools: Objects<IPPool>,
    pub clusteripranges: Objects<ClusterIPRange>,
    pub l2announcements: Objects<L2Announcement>,
    pub events: Vec<EventRecord>,
    /// Writes the world refused (a reconciler's bug), with the reason.
    pub refused: Vec<String>,
    /// The last `resourceVersion` handed out.
    version: u64,
}

/// What a round of writes changed.
impl World {
    pub fn new(m: Manifests) -> Self {
        World {
            namespaces: Objects::new(m.namespaces),
            nodes: Objects::new(m.nodes),
            services: Objects::new(m.services),
            pods: Pods::new(m.pods),
            endpoint_slices: Objects::new(m.endpoint_slices),
            ippools: Objects::new(m.ippools),
            clusteripranges: Objects::new(m.clusteripranges),
            l2announcements: Objects::new(m.l2announcements),
            events: Vec::new(),
            refused: Vec::new(),
            version: 0,
        }
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// Everything a node agent reads, as the relist of each of its watches
    /// (`portico local --dataplane` and `portico explain` feed their
    /// agents with it).
    pub fn agent_changes(&self) -> [portico_agent::Change; 5] {
        use portico_agent::Change;
        use portico_controllers::watch::Event;
        [
            Change::Services(Event::Reset(self.services.store.state())),
            Change::Slices(Event::Reset(self.endpoint_slices.store.state())),
            Change::Nodes(Event::Reset(self.nodes.store.state())),
            Change::Announcements(Event::Reset(self.l2announcements.store.state())),
            Change::Pools(Event::Reset(self.ippools.store.state())),
        ]
    }

    /// Carries out writes, as the API server would.
    pub fn write(&mut self, writes: Vec<Write>) -> anyhow::Result<()> {
        for w in &writes {
            self.write_one(w)?;
        }
        Ok(())
    }

    /// Carries out one write, as the API server would; returns the object
    /// as stored, or `Written::Nothing` when nothing changed.
    pub fn write_one(&mut self, write: &Write) -> anyhow::Result<Written> {
        let stored = match write {
            Write::Apply(Apply { target, patch, .. }) => match target.kind {
                TargetKind::Service => self
                    .services
                    .merge(
                        &target.namespace,
                        &target.name,
                        patch,
                        portico_controllers::k8s::merge_service,
                    )?
                    .map(Object::Service),
                TargetKind::IPPool => {
                    let version = self.version + 1;
                    let out = set_status(
                        &mut self.ippools,
                        &target.name,
                        patch,
                        version,
                        |p: &mut IPPool| &mut p.status,
                    )?;
                    self.version += u64::from(out.is_some());
                    out.map(Object::IPPool)
                }
                TargetKind::ClusterIPRange => {
                    let version = self.version + 1;
                    let out = set_status(
                        &mut self.clusteripranges,
                        &target.name,
                        patch,
                        version,
                        |r: &mut ClusterIPRange| &mut r.status,
                    )?;
                    self.version += u64::from(out.is_some());
                    out.map(Object::ClusterIPRange)
                }
                TargetKind::L2Announcement => {
                    let version = self.version + 1;
                    let out = set_status(
                        &mut self.l2announcements,
                        &target.name,
                        patch,
                        version,
                        |a: &mut L2Announcement| &mut a.status,
                    )?;
                    self.version += u64::from(out.is_some());
                    out.map(Object::L2Announcement)
                }
                TargetKind::EndpointSlice => self
                    .endpoint_slices
                    .merge(
                        &target.namespace,
                        &target.name,
                        patch,
                        DeepMerge::merge_from,
                    )?
                    .map(Object::EndpointSlice),
            },
            Write::Create(Object::EndpointSlice(slice)) => {
                let mut slice = (**slice).clone();
                let namespace = slice
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_owned());
                if slice.metadata.name.is_none() {
                    let prefix = slice.metadata.generate_name.clone().unwrap_or_default();
                    let name = loop {
                        let n = self.next_version();
                        let candidate = format!("{prefix}{}", generated_suffix(n));
                        if self.endpoint_slices.get(&namespace, &candidate).is_none() {
                            break candidate;
                        }
                    };
                    slice.metadata.name = Some(name);
                }
                let version = self.next_version();
                self.endpoint_slices
                    .put(slice, version)
                    .map(Object::EndpointSlice)
            }
            Write::Replace(Object::EndpointSlice(slice)) => {
                let target = Object::EndpointSlice(slice.clone()).target();
                let current = self.endpoint_slices.get(&target.namespace, &target.name);
                check_version(&target, slice.metadata.resource_version.as_deref(), current)?;
                let version = self.next_version();
                self.endpoint_slices
                    .put((**slice).clone(), version)
                    .map(Object::EndpointSlice)
            }
            Write::Create(o) | Write::Replace(o) => {
                anyhow::bail!(
                    "portico local does not create or replace {:?}s",
                    o.target().kind
                )
            }
            Write::Delete { target } => match target.kind {
                TargetKind::EndpointSlice => {
                    return Ok(
                        match self.endpoint_slices.remove(&target.namespace, &target.name) {
                            Some(_) => Written::Deleted(target.clone()),
                            None => Written::Nothing,
                        },
                    );
                }
                TargetKind::Service
                | TargetKind::IPPool
                | TargetKind::ClusterIPRange
                | TargetKind::L2Announcement => {
                    anyhow::bail!("portico local does not delete {:?}s", target.kind)
                }
            },
            Write::Event(event) => {
                self.events.push(event.clone());
                None
            }
        };
        Ok(stored.map_or(Written::Nothing, Written::Object))
    }
}

/// The local world is the API server of `portico local`: the reconcilers
/// write into it through the same trait as into a cluster. A write it
/// refuses is a bug of a reconciler; it is kept in `refused`.
impl Writer for World {
    fn write(
        &mut self,
        write: &Write,
    ) -> impl Future<Output = portico_controllers::Result<Written>> + Send {
        let result = self.write_one(write).map_err(|e| {
            let message = format!("{e:#}");
            self.refused.push(message.clone());
            portico_controllers::Error::Refused(message)
        });
        std::future::ready(result)
    }
}

/// Replaces the status of a cluster-scoped object with the applied one
/// (Portico is the status's only writer); `None` when nothing changed.
fn set_status<K, S>(
    objs: &mut Objects<K>,
    name: &str,
    patch: &serde_json::Value,
    version: u64,
    status: impl Fn(&mut K) -> &mut Option<S>,
) -> anyhow::Result<Option<Arc<K>>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
    S: serde::de::DeserializeOwned + PartialEq,
{
    let Some(current) = objs.get("", name) else {
        anyhow::bail!("{} {name} does not exist", K::kind(&()));
    };
    let new: S = serde_json::from_value(patch["status"].clone())?;
    let mut next = (*current).clone();
    if status(&mut next).as_ref() == Some(&new) {
        return Ok(None);
    }
    *status(&mut next) = Some(new);
    Ok(objs.put(next, version))
}

/// An update must carry the `resourceVersion` it replaces, as in the API.
fn check_version<K: kube::Resource>(
    target: &Target,
    given: Option<&str>,
    current: Option<Arc<K>>,
) -> anyhow::Result<()> {
    let Some(current) = current else {
        anyhow::bail!("{}/{} does not exist", target.namespace, target.name);
    };
    if given != current.meta().resource_version.as_deref() {
        anyhow::bail!(
            "conflict replacing {}/{}: version {given:?}, stored {:?}",
            target.namespace,
            target.name,
            current.meta().resource_version
        );
    }
    Ok(())
}
