//! The objects L2 announcement is planned from, as `portico node`'s
//! watches feed them.

use super::{Plan, Rings, plan_with};
use portico_catalog::{Catalog, Key, TrafficPolicy};
use portico_controllers::k8s::{Node, Service};
use portico_controllers::watch::Event;
use portico_crds::{IPPool, L2Announcement};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What `portico node` knows for L2 announcement, fed by watch events:
/// the L2Announcements, IPPools, Nodes and Services of the cluster.
#[derive(Default)]
pub struct L2Index {
    rings: Rings,
    announcements: Indexed<L2Announcement>,
    pools: Indexed<IPPool>,
    nodes: Indexed<Node>,
    services: Indexed<Service>,
}

/// Objects of one kind by `namespace/name`, rebuilt on every relist;
/// shared with the caller's stores, not copied.
struct Indexed<K> {
    synced: bool,
    /// By key (cluster-scoped objects: an empty namespace).
    objects: BTreeMap<Key, Arc<K>>,
}

impl<K> Default for Indexed<K> {
    fn default() -> Self {
        Indexed {
            synced: false,
            objects: BTreeMap::new(),
        }
    }
}

impl<K: kube::Resource> Indexed<K> {
    fn key(o: &K) -> Key {
        let meta = o.meta();
        Key::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }

    fn feed(&mut self, ev: Event<Arc<K>>) {
        match ev {
            Event::Reset(all) => {
                self.synced = true;
                self.objects = all.into_iter().map(|o| (Self::key(&o), o)).collect();
            }
            Event::Apply(o) => {
                self.objects.insert(Self::key(&o), o);
            }
            Event::Delete(o) => {
                self.objects.remove(&Self::key(&o));
            }
        }
    }
}

impl L2Index {
    /// L2Announcements.
    pub fn feed_announcements(&mut self, ev: Event<Arc<L2Announcement>>) {
        self.announcements.feed(ev);
    }

    /// IPPools.
    pub fn feed_pools(&mut self, ev: Event<Arc<IPPool>>) {
        self.pools.feed(ev);
    }

    /// Nodes.
    pub fn feed_nodes(&mut self, ev: Event<Arc<Node>>) {
        self.nodes.feed(ev);
    }

    /// Services.
    pub fn feed_services(&mut self, ev: Event<Arc<Service>>) {
        self.services.feed(ev);
    }

    /// Every kind has been listed once.
    pub fn synced(&self) -> bool {
        self.announcements.synced && self.pools.synced && self.nodes.synced && self.services.synced
    }

    /// Nodes have been listed once.
    pub fn nodes_synced(&self) -> bool {
        self.nodes.synced
    }

    /// A Node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes
            .objects
            .get(&Key::new("", name))
            .map(AsRef::as_ref)
    }

    /// Every Node.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.objects.values().map(AsRef::as_ref)
    }

    /// Every L2Announcement.
    pub fn announcements(&self) -> impl Iterator<Item = &L2Announcement> {
        self.announcements.objects.values().map(AsRef::as_ref)
    }

    /// A Service by key.
    pub fn service(&self, key: &Key) -> Option<&Service> {
        self.services.objects.get(key).map(AsRef::as_ref)
    }

    /// The plan over what is known (rings kept for the next one).
    pub fn plan(&mut self, catalog: &Catalog, live: &dyn Fn(&Node) -> bool) -> Plan {
        plan_with(
            self.announcements.objects.values().map(AsRef::as_ref),
            self.pools.objects.values().map(AsRef::as_ref),
            self.services.objects.values().map(AsRef::as_ref),
            self.nodes.objects.values().map(AsRef::as_ref),
            catalog,
            live,
            &mut self.rings,
        )
    }

    /// Whether an EndpointSlice event can change the plan: only the
    /// endpoints of `externalTrafficPolicy: Local` Services choose nodes.
    pub fn slice_matters(
        &self,
        catalog: &Catalog,
        slice: &portico_controllers::k8s::EndpointSlice,
    ) -> bool {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(portico_catalog::labels::SERVICE_NAME))
        else {
            return false;
        };
        let key = Key::new(
            slice
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            service.clone(),
        );
        catalog
            .service(&key)
            .is_none_or(|s| s.external_traffic_policy == TrafficPolicy::Local)
    }
}
