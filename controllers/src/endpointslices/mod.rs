//! EndpointSlices that follow the pods each Service selects, with the
//! semantics of kube-controller-manager's controller, so that kube-proxy,
//! CoreDNS and Portico's own DNS and dataplane can consume them unchanged.
//!
//! ```text
//!  Services ──┐   label index (both ways)         per dirty Service, when due:
//!  Pods ──────┼─> ns/key=value -> services    ──>  desired endpoints (desired.rs)
//!  Nodes ─────┤   ns/key=value -> pods              + existing managed slices
//!  Slices ────┘   node -> zone                      -> Plan (plan.rs) -> Vec<Write>
//! ```
//!
//! Events mark Services dirty: Service and slice changes at once, pod changes
//! after `batch_period` (so a burst of pod updates becomes one sync per
//! Service). [`EndpointSliceController::flush`] syncs the Services that are
//! due. Only slices labelled `endpointslice.kubernetes.io/managed-by:
//! endpointslice.portico.dev` are read or written; they are adopted by their
//! labels, so a restart rebuilds everything from the API.

mod desired;
mod plan;

pub use desired::{AddressType, Desired, PodInfo, address_types, desired};
pub use plan::{Plan, plan};

use crate::k8s::KeyOf;
use crate::k8s::{EndpointSlice, Key, Node, Pod, Service, Shared, service_type};
use crate::metrics::EndpointSliceMetrics;
use crate::write::{Object, Target, TargetKind, Write};
use portico_catalog::labels;
use portico_crds::names::ENDPOINTSLICE_MANAGER;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upstream's default and maximum of `--max-endpoints-per-slice`.
pub const DEFAULT_MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The largest `--max-endpoints-per-slice` the API allows.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 1000;

/// How the controller behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// At most this many endpoints per slice (1 to 1000).
    pub max_endpoints_per_slice: usize,
    /// Pod changes wait this long, so bursts become one sync per Service.
    pub batch_period: Duration,
    /// Delete the slices of deleted Services explicitly (`portico local`);
    /// in a cluster the garbage collector does it through owner references.
    pub delete_orphans: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_endpoints_per_slice: DEFAULT_MAX_ENDPOINTS_PER_SLICE,
            batch_period: Duration::from_secs(1),
            delete_orphans: false,
        }
    }
}

type LabelKey = (String, String, String);

/// The EndpointSlice index. See the module documentation.
pub struct EndpointSliceController {
    cfg: Config,
    services: HashMap<Key, Arc<Service>>,
    services_by_label: HashMap<LabelKey, BTreeSet<String>>,
    pods: HashMap<Key, PodInfo>,
    pods_by_label: HashMap<LabelKey, BTreeSet<String>>,
    /// Every Node, with its zone.
    nodes: HashMap<String, Option<String>>,
    slices: HashMap<Key, BTreeMap<String, Arc<EndpointSlice>>>,
    endpoints: HashMap<Key, usize>,
    /// The sum of `endpoints` (a metric), kept as it changes: summing at
    /// every flush made a watch event cost more with every Service known.
    endpoint_total: usize,
    dirty: HashMap<Key, Instant>,
    metrics: EndpointSliceMetrics,
}

impl EndpointSliceController {
    /// An empty index.
    pub fn new(cfg: Config, metrics: EndpointSliceMetrics) -> Self {
        EndpointSliceController {
            cfg,
            services: HashMap::new(),
            services_by_label: HashMap::new(),
            pods: HashMap::new(),
            pods_by_label: HashMap::new(),
            nodes: HashMap::new(),
            slices: HashMap::new(),
            endpoints: HashMap::new(),
            endpoint_total: 0,
            dirty: HashMap::new(),
            metrics,
        }
    }

    // ---- Services ------------------------------------------------------

    /// Replaces every Service (a relist); all are synced.
    pub fn reset_services<S: Shared<Service>>(
        &mut self,
        services: impl IntoIterator<Item = S>,
        now: Instant,
    ) {
        self.services.clear();
        self.services_by_label.clear();
        for svc in services {
            self.insert_service(svc);
        }
        self.mark_all(now);
    }

    /// A Service was added or changed: it is synced at once.
    pub fn apply_service(&mut self, svc: impl Shared<Service>, now: Instant) {
        let key = self.insert_service(svc);
        self.mark(key, now);
    }

    /// A Service was deleted. In `delete_orphans` mode its slices are deleted
    /// at the next flush; otherwise the garbage collector removes them.
    pub fn delete_service(&mut self, svc: &Service, now: Instant) {
        let key = Key::of(svc);
        self.remove_service(&key);
        if self.cfg.delete_orphans {
            self.mark(key, now);
        } else {
            self.dirty.remove(&key);
            self.forget_endpoints(&key);
        }
    }

    fn insert_service(&mut self, svc: impl Shared<Service>) -> Key {
        let svc = svc.shared();
        let key = Key::of(svc.as_ref());
        self.remove_service(&key);
        for (k, v) in selector(&svc).into_iter().flatten() {
            self.services_by_label
                .entry((key.namespace.clone(), k.clone(), v.clone()))
                .or_default()
                .insert(key.name.clone());
        }
        self.services.insert(key.clone(), svc);
        key
    }

    fn remove_service(&mut self, key: &Key) {
        if let Some(old) = self.services.remove(key) {
            for (k, v) in selector(&old).into_iter().flatten() {
                let lk = (key.namespace.clone(), k.clone(), v.clone());
                if let Some(set) = self.services_by_label.get_mut(&lk) {
                    set.remove(&key.name);
                    if set.is_empty() {
                        self.services_by_label.remove(&lk);
                    }
                }
            }
        }
    }

    // ---- Pods ----------------------------------------------------------

    /// Replaces every Pod (a relist); all Services are synced.
    pub fn reset_pods<P: std::borrow::Borrow<Pod>>(
        &mut self,
        pods: impl IntoIterator<Item = P>,
        now: Instant,
    ) {
        self.pods.clear();
        self.pods_by_label.clear();
        for pod in pods {
            self.insert_pod(PodInfo::of(pod.borrow()));
        }
        self.mark_all(now);
    }

    /// A Pod was added or changed: the Services that select it (before or
    /// after the change) are synced after the batch period.
    pub fn apply_pod(&mut self, pod: &Pod, now: Instant) {
        let info = PodInfo::of(pod);
        let key = Key::new(info.namespace.clone(), info.name.clone());
        let old = self.remove_pod(&key);
        if old.as_ref() == Some(&info) {
            self.insert_pod(info);
            return;
        }
        let mut affected = self.services_selecting(&info.namespace, &info.labels);
        if let Some(old) = &old {
            affected.extend(self.services_selecting(&old.namespace, &old.labels));
        }
        self.insert_pod(info);
        let due = now + self.cfg.batch_period;
        for name in affected {
            self.mark(Key::new(key.namespace.clone(), name), due);
        }
    }

    /// A Pod was deleted.
    pub fn delete_pod(&mut self, pod: &Pod, now: Instant) {
        let key = Key::of(pod);
        if let Some(old) = self.remove_pod(&key) {
            let due = now + self.cfg.batch_period;
            for name in self.services_selecting(&old.namespace, &old.labels) {
                self.mark(Key::new(key.namespace.clone(), name), due);
            }
        }
    }

    fn insert_pod(&mut self, info: PodInfo) {
        for (k, v) in &info.labels {
            self.pods_by_label
                .entry((info.namespace.clone(), k.clone(), v.clone()))
                .or_default()
                .insert(info.name.clone());
        }
        self.pods
            .insert(Key::new(info.namespace.clone(), info.name.clone()), info);
    }

    fn remove_pod(&mut self, key: &Key) -> Option<PodInfo> {
        let old = self.pods.remove(key)?;
        for (k, v) in &old.labels {
            let lk = (old.namespace.clone(), k.clone(), v.clone());
            if let Some(set) = self.pods_by_label.get_mut(&lk) {
                set.remove(&old.name);
                if set.is_empty() {
                    self.pods_by_label.remove(&lk);
                }
            }
        }
        Some(old)
    }

    /// Names of the Services in `namespace` whose selector matches `labels`.
    fn services_selecting(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (k, v) in labels {
            let Some(names) =
                self.services_by_label
                    .get(&(namespace.to_owned(), k.clone(), v.clone()))
            else {
                continue;
            };
            for name in names {
                let key = Key::new(namespace, name.clone());
                let matches = self
                    .services
                    .get(&key)
                    .and_then(|s| selector(s))
                    .is_some_and(|sel| sel.iter().all(|(sk, sv)| labels.get(sk) == Some(sv)));
                if matches {
                    out.insert(name.clone());
                }
            }
        }
        out
    }

    /// The pods a Service selects, through the smallest label posting list.
    fn pods_selected(&self, svc: &Service) -> Vec<&PodInfo> {
        let Some(sel) = selector(svc) else {
            return Vec::new();
        };
        let ns = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let lists: Option<Vec<&BTreeSet<String>>> = sel
            .iter()
            .map(|(k, v)| self.pods_by_label.get(&(ns.clone(), k.clone(), v.clone())))
            .collect();
        let Some(smallest) = lists.and_then(|l| l.into_iter().min_by_key(|s| s.len())) else {
            return Vec::new();
        };
        smallest
            .iter()
            .filter_map(|name| self.pods.get(&Key::new(ns.clone(), name.clone())))
            .filter(|p| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .collect()
    }

    // ---- Nodes ---------------------------------------------------------

    /// Replaces every Node (a relist).
    pub fn reset_nodes<'a>(&mut self, nodes: impl IntoIterator<Item = &'a Node>, now: Instant) {
        let nodes: HashMap<String, Option<String>> = nodes
            .into_iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, zone(n))))
            .collect();
        if nodes != self.nodes {
            self.nodes = nodes;
            self.mark_all(now);
        }
    }

    /// A Node was added or changed: only its coming and its zone matter.
    pub fn apply_node(&mut self, node: &Node, now: Instant) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let new = Some(zone(node));
        if self.nodes.get(&name) != new.as_ref() {
            self.nodes.insert(name.clone(), zone(node));
            self.mark_services_on_node(&name, now);
        }
    }

    /// A Node was deleted.
    pub fn delete_node(&mut self, node: &Node, now: Instant) {
        if let Some(name) = node.metadata.name.clone()
            && self.nodes.remove(&name).is_some()
        {
            self.mark_services_on_node(&name, now);
        }
    }

    /// Whether a pod's endpoint may be published: its Node exists, or the
    /// Service publishes not-ready addresses, or no Node is known at all
    /// (manifests that do not model nodes). Upstream skips such a pod
    /// until the Node comes (or the pod goes): a reference to a missing
    /// Node must not keep a dead address in the slices.
    fn on_known_node(&self, pod: &PodInfo, svc: &Service) -> bool {
        self.nodes.is_empty()
            || pod
                .node
                .as_deref()
                .is_none_or(|n| self.nodes.contains_key(n))
            || svc
                .spec
                .as_ref()
                .and_then(|s| s.publish_not_ready_addresses)
                .unwrap_or(false)
    }

    fn mark_services_on_node(&mut self, node: &str, now: Instant) {
        let affected: BTreeSet<Key> = self
            .pods
            .values()
            .filter(|p| p.node.as_deref() == Some(node))
            .flat_map(|p| {
                self.services_selecting(&p.namespace, &p.labels)
                    .into_iter()
                    .map(|name| Key::new(p.namespace.clone(), name))
            })
            .collect();
        for key in affected {
            self.mark(key, now);
        }
    }

    // ---- EndpointSlices ------------------------------------------------

    /// Replaces every EndpointSlice (a relist). Slices managed by others are
    /// ignored. Slices are shared with the caller's store, not copied.
    pub fn reset_slices(
        &mut self,
        slices: impl IntoIterator<Item = Arc<EndpointSlice>>,
        now: Instant,
    ) {
        self.slices.clear();
        for slice in slices {
            self.insert_slice(slice);
        }
        self.mark_all(now);
    }

    /// An EndpointSlice was added or changed (by anyone, Portico included).
    pub fn apply_slice(&mut self, slice: Arc<EndpointSlice>, now: Instant) {
        let Some((svc, name)) = managed(&slice) else {
            return;
        };
        let known = self.slices.get(&svc).and_then(|m| m.get(&name));
        if known.is_some_and(|k| *k == slice) {
            return;
        }
        self.insert_slice(slice);
        self.mark(svc, now);
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, slice: &EndpointSlice, now: Instant) {
        let Some((svc, name)) = managed(slice) else {
            return;
        };
        if let Some(m) = self.slices.get_mut(&svc) {
            m.remove(&name);
            if m.is_empty() {
                self.slices.remove(&svc);
            }
        }
        self.mark(svc, now);
    }

    fn insert_slice(&mut self, slice: Arc<EndpointSlice>) {
        if let Some((svc, name)) = managed(&slice) {
            self.slices.entry(svc).or_default().insert(name, slice);
        }
    }

    // ---- Syncing -------------------------------------------------------

    fn mark(&mut self, key: Key, due: Instant) {
        self.dirty
            .entry(key)
            .and_modify(|d| *d = (*d).min(due))
            .or_insert(due);
    }

    fn mark_all(&mut self, now: Instant) {
        let keys: Vec<Key> = self
            .services
            .keys()
            .chain(self.slices.keys())
            .cloned()
            .collect();
        for key in keys {
            self.mark(key, now);
        }
    }

    /// Marks every Service for a sync now (a replica that becomes leader
    /// writes what the others only computed).
    pub fn resync_all(&mut self, now: Instant) {
        self.mark_all(now);
    }

    /// Every Service known.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// Forgets a slice the writer just deleted, before the watch says so.
    pub fn forget_slice(&mut self, namespace: &str, name: &str, now: Instant) {
        let owner = self
            .slices
            .iter()
            .find(|(k, m)| k.namespace == namespace && m.contains_key(name))
            .map(|(k, _)| k.clone());
        if let Some(key) = owner {
            if let Some(m) = self.slices.get_mut(&key) {
                m.remove(name);
                if m.is_empty() {
                    self.slices.remove(&key);
                }
            }
            self.mark(key, now);
        }
    }

    /// When the next Service is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.dirty.values().min().copied()
    }

    /// Syncs every Service that is due at `now`; returns the writes.
    pub fn flush(&mut self, now: Instant) -> Vec<Write> {
        let mut due: Vec<Key> = self
            .dirty
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(k, _)| k.clone())
            .collect();
        due.sort();
        let mut writes = Vec::new();
        for key in due {
            self.dirty.remove(&key);
            writes.extend(self.sync(&key));
        }
        self.metrics
            .endpoints
            .set(i64::try_from(self.endpoint_total).unwrap_or(i64::MAX));
        writes
    }

    /// Records how many endpoints a Service's slices hold.
    fn set_endpoints(&mut self, key: &Key, count: usize) {
        let old = self.endpoints.insert(key.clone(), count).unwrap_or(0);
        self.endpoint_total = self.endpoint_total + count - old;
    }

    /// Forgets a Service's endpoint count.
    fn forget_endpoints(&mut self, key: &Key) {
        let old = self.endpoints.remove(key).unwrap_or(0);
        self.endpoint_total -= old;
    }

    /// A write for `svc` failed: sync it again after `delay`.
    pub fn retry(
        &mut self,
        target: &Target,
        slice: Option<&EndpointSlice>,
        now: Instant,
        delay: Duration,
        error: &str,
    ) -> Option<Write> {
        let service = slice
            .and_then(|s| {
                s.metadata
                    .labels
                    .as_ref()?
                    .get(labels::SERVICE_NAME)
                    .cloned()
            })
            .unwrap_or_else(|| target.name.clone());
        self.metrics.sync("error");
        let key = Key::new(target.namespace.clone(), service);
        self.mark(key.clone(), now + delay);
        // As upstream: a Warning on the Service (best effort, like every
        // Event).
        let svc = self.services.get(&key)?;
        Some(Write::event(
            svc.as_ref(),
            true,
            "FailedToUpdateEndpointSlices",
            "Sync",
            format!(
                "Error updating Endpoint Slices for Service {}/{}: {error}",
                key.namespace, key.name
            ),
        ))
    }

    /// The planned writes for one Service.
    fn sync(&mut self, key: &Key) -> Vec<Write> {
        let started = Instant::now();
        let existing: Vec<Arc<EndpointSlice>> = self
            .slices
            .get(key)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let mut counted = None;
        let mut forget = false;
        let mut missing_node = None;
        let plan = match self.services.get(key) {
            Some(svc) if selector(svc).is_some() && service_type(svc) != "ExternalName" => {
                let (pods, skipped): (Vec<&PodInfo>, Vec<&PodInfo>) = self
                    .pods_selected(svc)
                    .into_iter()
                    .partition(|p| self.on_known_node(p, svc));
                if let Some(p) = skipped.first() {
                    missing_node = Some(format!(
                        "skipping Pod {} for Service {}/{}: Node {} Not Found{}",
                        p.name,
                        key.namespace,
                        key.name,
                        p.node.as_deref().unwrap_or_default(),
                        match skipped.len() {
                            1 => String::new(),
                            n => format!(" (and {} more Pods)", n - 1),
                        }
                    ));
                }
                let desired = desired(svc, pods, |node| self.nodes.get(node).cloned().flatten());
                let count = desired
                    .values()
                    .flat_map(|g| g.values())
                    .map(|g| g.endpoints.len())
                    .sum();
                counted = Some(count);
                let mut plan = plan(svc, &desired, &existing, self.cfg.max_endpoints_per_slice);
                // Being deleted: no new slices (the garbage collector would
                // race them), as upstream; updates and deletes go on.
                if svc.metadata.deletion_timestamp.is_some() {
                    plan.create.clear();
                }
                plan
            }
            // No selector, ExternalName, or (in delete_orphans mode) deleted:
            // the slices Portico made are no longer wanted. Others' slices
            // were never in `existing`.
            Some(_) => {
                forget = true;
                Plan {
                    delete: existing,
                    ..Plan::default()
                }
            }
            None if self.cfg.delete_orphans => {
                forget = true;
                Plan {
                    delete: existing,
                    ..Plan::default()
                }
            }
            None => Plan::default(),
        };
        match counted {
            Some(count) => self.set_endpoints(key, count),
            None if forget => self.forget_endpoints(key),
            None => {}
        }
        self.metrics.sync("success");
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        let mut out = writes(key, plan, &self.metrics);
        // As upstream's sync error: a Warning on the Service; the Service
        // is synced again when the Node comes.
        if let (Some(message), Some(svc)) = (missing_node, self.services.get(key)) {
            out.push(Write::event(
                svc.as_ref(),
                true,
                "FailedToUpdateEndpointSlices",
                "Sync",
                format!(
                    "Error updating Endpoint Slices for Service {}/{}: {message}",
                    key.namespace, key.name
                ),
            ));
        }
        out
    }

    /// The slices of a Service that Portico manages, by name.
    pub fn slices_of(&self, key: &Key) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .get(key)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

fn writes(key: &Key, plan: Plan, metrics: &EndpointSliceMetrics) -> Vec<Write> {
    let mut out = Vec::with_capacity(plan.delete.len() + plan.update.len() + plan.create.len());
    for s in plan.delete {
        metrics.change("delete");
        out.push(Write::Delete {
            target: Target {
                kind: TargetKind::EndpointSlice,
                namespace: key.namespace.clone(),
                name: s.metadata.name.clone().unwrap_or_default(),
            },
        });
    }
    for s in plan.update {
        metrics.change("update");
        out.push(Write::Replace(Object::EndpointSlice(Arc::new(s))));
    }
    for s in plan.create {
        metrics.change("create");
        out.push(Write::Create(Object::EndpointSlice(Arc::new(s))));
    }
    out
}

/// The selector of a Service that gets slices: `None` when it has none (or
/// an empty one), in which case its slices are the user's.
fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

fn zone(node: &Node) -> Option<String> {
    node.metadata.labels.as_ref()?.get(labels::ZONE).cloned()
}

/// The Service key and name of a slice Portico manages.
fn managed(slice: &EndpointSlice) -> Option<(Key, String)> {
    let l = slice.metadata.labels.as_ref()?;
    if l.get(labels::MANAGED_BY).map(String::as_str) != Some(ENDPOINTSLICE_MANAGER) {
        return None;
    }
    let svc = l.get(labels::SERVICE_NAME)?;
    let ns = slice
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    Some((Key::new(ns, svc.clone()), slice.metadata.name.clone()?))
}

#[cfg(test)]
mod tests;
