//! Watch plumbing shared by every component that reads the API: one watch
//! stream per kind with kube-runtime's backoff, relists turned into one
//! [`Event::Reset`], and one [`Index`] trait that the reconcilers and the
//! catalog are fed through.
//!
//! ```text
//!  watcher::Event ──Relist::feed──> Event::{Reset, Apply, Delete} ──Index──> catalog / reconciler
//! ```

use crate::k8s::{EndpointSlice, Namespace, Service};
use futures::{StreamExt, TryStreamExt};
use kube::Api;
use kube::api::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use portico_catalog::Catalog;
use std::sync::Arc;
use std::time::Instant;

/// One change of one kind, after relists are collected: the whole set
/// (`Reset`, on every list or relist), one object applied, or one deleted.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<K> {
    /// Every object, after a (re)list: what is not here is gone.
    Reset(Vec<K>),
    /// One object added or changed.
    Apply(K),
    /// One object removed.
    Delete(K),
}

impl<K> Event<K> {
    /// Feeds this event into an index.
    pub fn into_index<I: Index<K> + ?Sized>(self, index: &mut I) {
        match self {
            Event::Reset(all) => index.reset(all),
            Event::Apply(o) => index.apply(o),
            Event::Delete(o) => index.delete(o),
        }
    }

    /// The same event with its objects mapped.
    pub fn map<T>(self, mut f: impl FnMut(K) -> T) -> Event<T> {
        match self {
            Event::Reset(all) => Event::Reset(all.into_iter().map(f).collect()),
            Event::Apply(o) => Event::Apply(f(o)),
            Event::Delete(o) => Event::Delete(f(o)),
        }
    }
}

/// Something kept up to date from the objects of one kind.
pub trait Index<K> {
    /// Every object, after a (re)list.
    fn reset(&mut self, all: Vec<K>);
    /// One object added or changed.
    fn apply(&mut self, obj: K);
    /// One object removed.
    fn delete(&mut self, obj: K);
}

/// The catalog follows Services and EndpointSlices (DNS and the dataplane
/// read it); the one feeder of both.
impl Index<Service> for Catalog {
    fn reset(&mut self, all: Vec<Service>) {
        self.reset_services(all.iter());
    }
    fn apply(&mut self, obj: Service) {
        self.apply_service(&obj);
    }
    fn delete(&mut self, obj: Service) {
        self.delete_service(&obj);
    }
}

impl Index<EndpointSlice> for Catalog {
    fn reset(&mut self, all: Vec<EndpointSlice>) {
        self.reset_slices(all.iter());
    }
    fn apply(&mut self, obj: EndpointSlice) {
        self.apply_slice(&obj);
    }
    fn delete(&mut self, obj: EndpointSlice) {
        self.delete_slice(&obj);
    }
}

impl Index<Arc<Service>> for Catalog {
    fn reset(&mut self, all: Vec<Arc<Service>>) {
        self.reset_services(all.iter().map(AsRef::as_ref));
    }
    fn apply(&mut self, obj: Arc<Service>) {
        self.apply_service(&obj);
    }
    fn delete(&mut self, obj: Arc<Service>) {
        self.delete_service(&obj);
    }
}

impl Index<Arc<EndpointSlice>> for Catalog {
    fn reset(&mut self, all: Vec<Arc<EndpointSlice>>) {
        self.reset_slices(all.iter().map(AsRef::as_ref));
    }
    fn apply(&mut self, obj: Arc<EndpointSlice>) {
        self.apply_slice(&obj);
    }
    fn delete(&mut self, obj: Arc<EndpointSlice>) {
        self.delete_slice(&obj);
    }
}

/// Namespaces: DNS answers for the namespaces that exist.
impl Index<Namespace> for Catalog {
    fn reset(&mut self, all: Vec<Namespace>) {
        self.reset_namespaces(all.iter());
    }
    fn apply(&mut self, obj: Namespace) {
        self.apply_namespace(&obj);
    }
    fn delete(&mut self, obj: Namespace) {
        self.delete_namespace(&obj);
    }
}

/// Objects of one kind collected during a relist.
#[derive(Debug)]
pub struct Relist<K> {
    buffer: Vec<K>,
    synced: bool,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Relist {
            buffer: Vec::new(),
            synced: false,
        }
    }
}

impl<K> Relist<K> {
    /// Feeds a watch event; returns the relisted objects on `InitDone`, and
    /// the change for other events.
    pub fn feed(&mut self, event: watcher::Event<K>) -> Option<Event<K>> {
        match event {
            watcher::Event::Init => {
                self.buffer.clear();
                None
            }
            watcher::Event::InitApply(o) => {
                self.buffer.push(o);
                None
            }
            watcher::Event::InitDone => {
                self.synced = true;
                Some(Event::Reset(std::mem::take(&mut self.buffer)))
            }
            watcher::Event::Apply(o) => Some(Event::Apply(o)),
            watcher::Event::Delete(o) => Some(Event::Delete(o)),
        }
    }

    /// Whether a first list has completed.
    pub fn synced(&self) -> bool {
        self.synced
    }
}

/// One watch with kube-runtime's default backoff, its events wrapped in the
/// caller's own change type.
pub fn watch<K, C>(
    api: Api<K>,
    config: watcher::Config,
    wrap: impl FnMut(watcher::Event<K>) -> C + Send + 'static,
) -> futures::stream::BoxStream<'static, Result<C, watcher::Error>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    C: Send + 'static,
{
    watcher(api, config).default_backoff().map_ok(wrap).boxed()
}

/// A watch of metadata only (Nodes' zones, Namespaces' labels), its
/// objects rebuilt with metadata alone.
pub fn watch_metadata<K, C>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
    mut wrap: impl FnMut(watcher::Event<K>) -> C + Send + 'static,
) -> futures::stream::BoxStream<'static, Result<C, watcher::Error>>
where
    K: kube::Resource + Default + Clone + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    PartialObjectMeta<K>: kube::Resource<DynamicType = K::DynamicType>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send,
    C: Send + 'static,
{
    watch(api, config, move |e| wrap(from_meta(e)))
}

/// Rebuilds an object from its metadata.
fn from_meta<K: kube::Resource + Default>(
    ev: watcher::Event<PartialObjectMeta<K>>,
) -> watcher::Event<K> {
    let obj = |meta: PartialObjectMeta<K>| {
        let mut o = K::default();
        *o.meta_mut() = meta.metadata;
        o
    };
    match ev {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(m) => watcher::Event::InitApply(obj(m)),
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::Apply(m) => watcher::Event::Apply(obj(m)),
        watcher::Event::Delete(m) => watcher::Event::Delete(obj(m)),
    }
}

/// Sleeps until `due`, or forever without one.
pub async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Names(Vec<&'static str>);
    impl Index<&'static str> for Names {
        fn reset(&mut self, all: Vec<&'static str>) {
            self.0 = all;
        }
        fn apply(&mut self, obj: &'static str) {
            self.0.retain(|n| *n != obj);
            self.0.push(obj);
        }
        fn delete(&mut self, obj: &'static str) {
            self.0.retain(|n| *n != obj);
        }
    }

    #[test]
    fn a_relist_becomes_one_reset_and_forgets_a_broken_one() {
        let mut relist = Relist::default();
        let mut names = Names::default();
        assert!(!relist.synced());
        for e in [
            watcher::Event::Init,
            watcher::Event::InitApply("a"),
            // the list broke off and started again
            watcher::Event::Init,
            watcher::Event::InitApply("b"),
            watcher::Event::InitApply("c"),
            watcher::Event::InitDone,
            watcher::Event::Apply("d"),
            watcher::Event::Delete("b"),
        ] {
            if let Some(ev) = relist.feed(e) {
                ev.into_index(&mut names);
            }
        }
        assert!(relist.synced());
        assert_eq!(names.0, ["c", "d"]);
    }
}
