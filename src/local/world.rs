//! The in-memory API of `portico local`: one kube-runtime reflector store per
//! kind, fed from the manifests, and the local writer that carries out the
//! reconcilers' writes into those stores.
//!
//! Server-side apply is emulated with k8s-openapi's `DeepMerge`, which merges
//! lists by the same keys as the API server (conditions by `type`, ...).

use super::load::Manifests;
use k8s_openapi::DeepMerge;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::watcher;
use portico_controllers::k8s::{Namespace, Node, Pod, Service};
use portico_controllers::{Apply, EventRecord, TargetKind, Write};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// One kind's store and the writer that feeds it.
pub struct Objects<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    pub store: Store<K>,
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
    fn new(objects: Vec<K>) -> Self {
        let (store, mut writer) = reflector::store::<K>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for obj in objects {
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

    /// Merges a server-side apply patch into the object; returns the new
    /// object when it changed.
    fn merge(
        &mut self,
        namespace: &str,
        name: &str,
        patch: &serde_json::Value,
    ) -> anyhow::Result<Option<Arc<K>>> {
        let key = ObjectRef::<K>::new(name).within(namespace);
        let Some(current) = self.store.get(&key) else {
            anyhow::bail!("{} {namespace}/{name} does not exist", K::kind(&()));
        };
        let patch: K = serde_json::from_value(patch.clone())?;
        let mut next = (*current).clone();
        next.merge_from(patch);
        if next == *current {
            return Ok(None);
        }
        self.writer
            .apply_watcher_event(&watcher::Event::Apply(next));
        Ok(self.store.get(&key))
    }
}

/// Every object `portico local` knows, and the Events recorded so far.
pub struct World {
    pub namespaces: Objects<Namespace>,
    pub nodes: Objects<Node>,
    pub services: Objects<Service>,
    pub pods: Objects<Pod>,
    pub events: Vec<EventRecord>,
}

/// What a round of writes changed.
#[derive(Default)]
pub struct Changed {
    pub services: Vec<Arc<Service>>,
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

impl World {
    pub fn new(m: Manifests) -> Self {
        World {
            namespaces: Objects::new(m.namespaces),
            nodes: Objects::new(m.nodes),
            services: Objects::new(m.services),
            pods: Objects::new(m.pods),
            events: Vec::new(),
        }
    }

    /// Carries out writes, as the API server would; returns what changed.
    pub fn write(&mut self, writes: Vec<Write>) -> anyhow::Result<Changed> {
        let mut changed = Changed::default();
        for write in writes {
            match write {
                Write::Apply(Apply { target, patch, .. }) => match target.kind {
                    TargetKind::Service => {
                        if let Some(svc) =
                            self.services
                                .merge(&target.namespace, &target.name, &patch)?
                        {
                            changed.services.retain(|s| {
                                s.metadata.name != svc.metadata.name
                                    || s.metadata.namespace != svc.metadata.namespace
                            });
                            changed.services.push(svc);
                        }
                    }
                },
                Write::Event(event) => self.events.push(event),
            }
        }
        Ok(changed)
    }
}
