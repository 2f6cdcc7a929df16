//! Per-namespace sub-ranges of the service range (`ClusterIPRange`).
//!
//! Each valid range has its own [`Pool`] that mirrors the addresses of the
//! main range inside it. Services of the namespaces a range selects draw
//! their dynamic addresses from it; other namespaces never get its
//! addresses: a general allocation that lands inside a range is *parked*
//! (kept taken in the main pool, held by no Service) and another address is
//! drawn. Parked addresses are given back when the ranges change.

use crate::k8s::condition_summaries;
use crate::write::{Apply, Target, TargetKind, Write};
use ipnet::IpNet;
use kube::core::{Selector, SelectorExt};
use portico_crds::{ClusterIPRange, ClusterIPRangeStatus};
use portico_ipam::{Family, Pool, PoolOptions};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// Event reason of a range that cannot be used.
pub const RANGE_CONFLICT: &str = "ClusterIPRangeConflict";

/// One `ClusterIPRange`.
pub(super) struct SubRange {
    pub(super) name: String,
    pub(super) cidr: IpNet,
    pub(super) family: Family,
    selector: Selector,
    pub(super) pool: Pool,
    obj: Arc<ClusterIPRange>,
}

/// A range that cannot be used, and why.
struct Rejected {
    obj: Arc<ClusterIPRange>,
    reason: &'static str,
    message: String,
}

/// Every range, the namespaces' labels, and the parked addresses.
#[derive(Default)]
pub(super) struct SubRanges {
    objs: BTreeMap<String, Arc<ClusterIPRange>>,
    pub(super) valid: Vec<SubRange>,
    rejected: Vec<Rejected>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    pub(super) parked: HashSet<IpAddr>,
    reported: HashMap<String, String>,
}

impl SubRanges {
    /// Forgets which rejected ranges were reported.
    pub(super) fn forget_reports(&mut self) {
        self.reported.clear();
    }

    /// Replaces every range; returns whether anything changed.
    pub(super) fn reset(&mut self, ranges: impl IntoIterator<Item = Arc<ClusterIPRange>>) -> bool {
        let new: BTreeMap<String, Arc<ClusterIPRange>> = ranges
            .into_iter()
            .map(|r| (r.metadata.name.clone().unwrap_or_default(), r))
            .collect();
        let same_specs = new.len() == self.objs.len()
            && new
                .iter()
                .all(|(n, r)| self.objs.get(n).is_some_and(|o| o.spec == r.spec));
        self.objs = new;
        // Keep the latest objects (their statuses) either way.
        for s in &mut self.valid {
            if let Some(o) = self.objs.get(&s.name) {
                s.obj = o.clone();
            }
        }
        !same_specs
    }

    /// A range was added or changed; returns whether its spec changed.
    pub(super) fn apply(&mut self, range: &ClusterIPRange) -> bool {
        let mut all: Vec<Arc<ClusterIPRange>> = self.objs.values().cloned().collect();
        all.retain(|r| r.metadata.name != range.metadata.name);
        all.push(Arc::new(range.clone()));
        self.reset(all)
    }

    /// A range was deleted.
    pub(super) fn delete(&mut self, range: &ClusterIPRange) -> bool {
        let all: Vec<Arc<ClusterIPRange>> = self
            .objs
            .values()
            .filter(|r| r.metadata.name != range.metadata.name)
            .cloned()
            .collect();
        self.reset(all)
    }

    /// Records a namespace's labels; returns whether they changed.
    pub(super) fn set_namespace(&mut self, name: String, labels: BTreeMap<String, String>) -> bool {
        self.namespaces.insert(name, labels.clone()) != Some(labels)
    }

    /// Replaces every namespace's labels.
    pub(super) fn set_namespaces(&mut self, all: HashMap<String, BTreeMap<String, String>>) {
        self.namespaces = all;
    }

    /// Rebuilds the valid ranges (oldest first; a range outside every
    /// service range, or overlapping an older one, is rejected) and their
    /// pools from the addresses taken in the main range.
    pub(super) fn rebuild(
        &mut self,
        service_ranges: &[IpNet],
        taken: impl IntoIterator<Item = IpAddr> + Clone,
    ) {
        let mut order: Vec<Arc<ClusterIPRange>> = self.objs.values().cloned().collect();
        order.sort_by_cached_key(|r| {
            (
                r.metadata.creation_timestamp.clone().map(|t| t.0),
                r.metadata.name.clone(),
            )
        });
        self.valid.clear();
        self.rejected.clear();
        for obj in order {
            let name = obj.metadata.name.clone().unwrap_or_default();
            let reject = |reason, message: String| Rejected {
                obj: obj.clone(),
                reason,
                message,
            };
            let cidr: IpNet = match obj.spec.cidr.parse::<IpNet>() {
                Ok(c) if c.trunc() == c => c,
                Ok(c) => {
                    self.rejected.push(reject(
                        "InvalidSpec",
                        format!(
                            "spec.cidr {c} has host bits set; did you mean {}?",
                            c.trunc()
                        ),
                    ));
                    continue;
                }
                Err(_) => {
                    self.rejected.push(reject(
                        "InvalidSpec",
                        format!("spec.cidr {:?} is not a CIDR", obj.spec.cidr),
                    ));
                    continue;
                }
            };
            let selector = match Selector::try_from(obj.spec.namespace_selector.clone()) {
                Ok(s) => s,
                Err(e) => {
                    self.rejected.push(reject(
                        "InvalidSpec",
                        format!("spec.namespaceSelector: {e}"),
                    ));
                    continue;
                }
            };
            if !service_ranges.iter().any(|r| r.contains(&cidr)) {
                let ranges: Vec<String> = service_ranges.iter().map(ToString::to_string).collect();
                self.rejected.push(reject(
                    "OutsideServiceRange",
                    format!(
                        "{cidr} is outside the service range ({})",
                        ranges.join(", ")
                    ),
                ));
                continue;
            }
            if let Some(older) = self
                .valid
                .iter()
                .find(|v| v.cidr.contains(&cidr.network()) || cidr.contains(&v.cidr.network()))
            {
                self.rejected.push(reject(
                    "Overlap",
                    format!(
                        "{cidr} overlaps ClusterIPRange {} ({})",
                        older.name, older.cidr
                    ),
                ));
                continue;
            }
            let opts = PoolOptions {
                lowest_first: false,
                ..PoolOptions::lb_pool()
            };
            let Ok(pool) = Pool::parse(&[cidr.to_string()], opts) else {
                self.rejected.push(reject(
                    "InvalidSpec",
                    format!("spec.cidr {cidr} cannot be used"),
                ));
                continue;
            };
            let family = match cidr {
                IpNet::V4(_) => Family::V4,
                IpNet::V6(_) => Family::V6,
            };
            self.valid.push(SubRange {
                name,
                cidr,
                family,
                selector,
                pool,
                obj,
            });
        }
        for ip in taken {
            self.mark(ip);
        }
    }

    /// The valid range that contains `ip`.
    pub(super) fn containing(&self, ip: IpAddr) -> Option<usize> {
        self.valid.iter().position(|s| s.cidr.contains(&ip))
    }

    /// The valid ranges of `family` that select `namespace`.
    pub(super) fn selecting(&self, namespace: &str, family: Family) -> Vec<usize> {
        let labels = self.namespaces.get(namespace).cloned().unwrap_or_default();
        self.valid
            .iter()
            .enumerate()
            .filter(|(_, s)| s.family == family && s.selector.matches(&labels))
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether the range that contains `ip` (if any) lets `namespace` have it.
    pub(super) fn allows(&self, namespace: &str, ip: IpAddr) -> Result<(), String> {
        let Some(i) = self.containing(ip) else {
            return Ok(());
        };
        let s = &self.valid[i];
        let labels = self.namespaces.get(namespace).cloned().unwrap_or_default();
        if s.selector.matches(&labels) {
            Ok(())
        } else {
            Err(format!(
                "clusterIP {ip} is in ClusterIPRange {} ({}), which does not select namespace {namespace}",
                s.name, s.cidr
            ))
        }
    }

    /// Marks `ip` taken in the range that contains it.
    pub(super) fn mark(&mut self, ip: IpAddr) {
        if let Some(i) = self.containing(ip) {
            let _ = self.valid[i].pool.allocate_ip(ip);
        }
    }

    /// Frees `ip` in the range that contains it.
    pub(super) fn release(&mut self, ip: IpAddr) {
        if let Some(i) = self.containing(ip) {
            self.valid[i].pool.release(ip);
        }
    }

    /// Status applies for the ranges whose status differs from what they
    /// show, and an Event for each new conflict.
    pub(super) fn writes(&mut self) -> Vec<Write> {
        let mut out = Vec::new();
        let cond = |obj: &ClusterIPRange, type_: &str, ok: bool, reason: &str, message: String| {
            let previous = obj
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            crate::conditions::condition(
                previous,
                type_,
                ok,
                reason,
                message,
                obj.metadata.generation,
            )
        };
        let mut statuses: Vec<(Arc<ClusterIPRange>, ClusterIPRangeStatus)> = Vec::new();
        for s in &self.valid {
            let u = s.pool.usage(s.family);
            let free = i64::try_from(u.free).unwrap_or(i64::MAX);
            statuses.push((
                s.obj.clone(),
                ClusterIPRangeStatus {
                    conditions: vec![
                        cond(
                            &s.obj,
                            "Ready",
                            true,
                            "Ready",
                            format!("{free} addresses free"),
                        ),
                        cond(
                            &s.obj,
                            "Conflict",
                            false,
                            "NoConflict",
                            "inside the service range, overlapping no other range".to_owned(),
                        ),
                    ],
                    used: i64::try_from(u.used).unwrap_or(i64::MAX),
                    free,
                },
            ));
        }
        for r in &self.rejected {
            let conflict = r.reason != "InvalidSpec";
            statuses.push((
                r.obj.clone(),
                ClusterIPRangeStatus {
                    conditions: vec![
                        cond(&r.obj, "Ready", false, r.reason, r.message.clone()),
                        cond(&r.obj, "Conflict", conflict, r.reason, r.message.clone()),
                    ],
                    used: 0,
                    free: 0,
                },
            ));
            let name = r.obj.metadata.name.clone().unwrap_or_default();
            if self.reported.get(&name) != Some(&r.message) {
                out.push(Write::event(
                    r.obj.as_ref(),
                    true,
                    RANGE_CONFLICT,
                    "Validate",
                    r.message.clone(),
                ));
                self.reported.insert(name, r.message.clone());
            }
        }
        for (obj, status) in statuses {
            let current = obj.status.clone().unwrap_or_default();
            let key =
                |s: &ClusterIPRangeStatus| (s.used, s.free, condition_summaries(&s.conditions));
            if key(&status) == key(&current) {
                continue;
            }
            let name = obj.metadata.name.clone().unwrap_or_default();
            out.push(Write::Apply(Apply {
                target: Target {
                    kind: TargetKind::ClusterIPRange,
                    namespace: String::new(),
                    name: name.clone(),
                },
                status: true,
                patch: json!({
                    "apiVersion": "portico.dev/v1alpha1",
                    "kind": "ClusterIPRange",
                    "metadata": { "name": name },
                    "status": status,
                }),
            }));
        }
        out
    }

    /// Usage of every valid range, for metrics.
    pub(super) fn usage(&self) -> Vec<(String, portico_ipam::Usage)> {
        self.valid
            .iter()
            .map(|s| (s.cidr.to_string(), s.pool.usage(s.family)))
            .collect()
    }
}
