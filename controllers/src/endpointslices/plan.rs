//! Packing desired endpoints into EndpointSlices with as few writes as
//! possible, as kube-controller-manager does (`reconcileByPortMapping`,
//! `finalize`, the placeholder slice):
//!
//! 1. Each existing slice keeps the endpoints that are still desired (updated
//!    in place when they changed) and drops the others. A slice that lost
//!    everything is deleted; one that changed is updated; the rest are
//!    unchanged and not written.
//! 2. New endpoints first fill the slices that are written anyway, fullest
//!    first.
//! 3. What is left goes into the fullest unchanged slice that can take all
//!    of it, else into new slices. Slices are never repacked to be tidy.
//! 4. A Service that would have no slice at all gets one empty placeholder.
//! 5. A slice to create reuses (updates) a slice that would be deleted.

use super::desired::{AddressType, Desired, EndpointKey, Group, PortsKey};
use crate::k8s::KeyOf;
use crate::k8s::{Endpoint, EndpointSlice, Key, ObjectMeta, OwnerReference, Service, is_headless};
use portico_catalog::labels;
use portico_crds::names::ENDPOINTSLICE_MANAGER;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The writes one Service needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Slices to create (named by `generateName`).
    pub create: Vec<EndpointSlice>,
    /// Slices to replace (existing names and resource versions).
    pub update: Vec<EndpointSlice>,
    /// Slices to delete.
    pub delete: Vec<Arc<EndpointSlice>>,
}

impl Plan {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// Plans the writes that turn `existing` (the Service's slices managed by
/// Portico) into `desired`, with at most `max` endpoints per slice.
pub fn plan(svc: &Service, desired: &Desired, existing: &[Arc<EndpointSlice>], max: usize) -> Plan {
    let meta = SliceMeta::of(svc);
    let mut out = Plan::default();
    let mut by_group: BTreeMap<(AddressType, PortsKey), Vec<Arc<EndpointSlice>>> = BTreeMap::new();
    for slice in existing {
        match AddressType::parse(&slice.address_type) {
            // A slice owned by another Service of this name (one deleted
            // and made again) is deleted, never taken over, as upstream.
            Some(t) if desired.contains_key(&t) && meta.owns(slice) => {
                let key = PortsKey::of(slice.ports.as_deref().unwrap_or_default());
                by_group.entry((t, key)).or_default().push(slice.clone());
            }
            _ => out.delete.push(slice.clone()),
        }
    }
    for (t, groups) in desired {
        for (ports, group) in groups {
            let slices = by_group.remove(&(*t, ports.clone())).unwrap_or_default();
            plan_group(&meta, *t, group, slices, max, &mut out);
        }
    }
    out.delete.extend(by_group.into_values().flatten());

    // 4. The placeholder: each address type of the Service always has at
    //    least one slice (upstream's reconcileByAddressType).
    for t in desired.keys() {
        let of_type = |s: &EndpointSlice| AddressType::parse(&s.address_type) == Some(*t);
        let existing_t = existing.iter().filter(|s| of_type(s)).count();
        let deleted: Vec<usize> = (0..out.delete.len())
            .filter(|i| of_type(&out.delete[*i]))
            .collect();
        if existing_t != deleted.len() || out.create.iter().any(of_type) {
            continue;
        }
        let placeholder = meta.new_slice(*t, Vec::new());
        match deleted.as_slice() {
            [only] if is_placeholder_of(&out.delete[*only], &placeholder, &meta) => {
                out.delete.remove(*only);
            }
            _ => out.create.push(placeholder),
        }
    }
    // 5. Reuse slices that would be deleted for slices that would be created.
    let mut i = 0;
    while i < out.delete.len() && !out.create.is_empty() {
        let doomed = &out.delete[i];
        let reusable = out
            .create
            .last()
            .is_some_and(|c| c.address_type == doomed.address_type && meta.owns(doomed));
        if reusable {
            let doomed = out.delete.remove(i);
            if let Some(mut slice) = out.create.pop() {
                slice.metadata.name = doomed.metadata.name.clone();
                slice.metadata.resource_version = doomed.metadata.resource_version.clone();
                out.update.push(slice);
            }
        } else {
            i += 1;
        }
    }

    out
}

fn is_placeholder_of(slice: &EndpointSlice, placeholder: &EndpointSlice, meta: &SliceMeta) -> bool {
    slice.address_type == placeholder.address_type
        && slice.endpoints.is_empty()
        && slice.ports.as_deref().unwrap_or_default().is_empty()
        && meta.is_current(slice)
}

fn plan_group(
    meta: &SliceMeta,
    t: AddressType,
    group: &Group,
    slices: Vec<Arc<EndpointSlice>>,
    max: usize,
    out: &mut Plan,
) {
    let mut remaining: BTreeMap<EndpointKey, Endpoint> = group.endpoints.clone();
    let mut to_update: Vec<EndpointSlice> = Vec::new();
    let mut unchanged: Vec<Arc<EndpointSlice>> = Vec::new();

    // 1. Keep what is still desired, drop the rest.
    for slice in slices {
        let mut kept = Vec::with_capacity(slice.endpoints.len());
        let mut changed = !meta.is_current(&slice);
        for ep in &slice.endpoints {
            match remaining.remove(&EndpointKey::of(ep)) {
                Some(want) => {
                    changed |= want != *ep;
                    kept.push(want);
                }
                None => changed = true,
            }
        }
        if !changed {
            unchanged.push(slice);
        } else if kept.is_empty() {
            out.delete.push(slice);
        } else {
            let mut s = (*slice).clone();
            s.endpoints = kept;
            meta.stamp(&mut s);
            to_update.push(s);
        }
    }

    // 2. Fill the slices written anyway, fullest first.
    to_update.sort_by_key(|s| std::cmp::Reverse(s.endpoints.len()));
    for s in &mut to_update {
        fill(s, &mut remaining, max);
    }

    // 3. The fullest unchanged slice that can take all the rest, else new slices.
    while !remaining.is_empty() {
        let mut slice = None;
        if remaining.len() < max {
            let fits = unchanged
                .iter()
                .enumerate()
                .filter(|(_, s)| s.endpoints.len() + remaining.len() <= max)
                .max_by_key(|(_, s)| s.endpoints.len())
                .map(|(i, _)| i);
            if let Some(i) = fits {
                let mut s = (*unchanged.swap_remove(i)).clone();
                meta.stamp(&mut s);
                slice = Some(s);
            }
        }
        let mut s = slice.unwrap_or_else(|| meta.new_slice(t, group.ports.clone()));
        fill(&mut s, &mut remaining, max);
        if s.metadata.name.is_none() {
            out.create.push(s);
        } else {
            to_update.push(s);
        }
    }
    out.update.extend(to_update);
}

fn fill(slice: &mut EndpointSlice, remaining: &mut BTreeMap<EndpointKey, Endpoint>, max: usize) {
    while slice.endpoints.len() < max {
        let Some((_, ep)) = remaining.pop_first() else {
            break;
        };
        slice.endpoints.push(ep);
    }
}

/// The metadata every slice of a Service carries.
pub struct SliceMeta {
    key: Key,
    labels: BTreeMap<String, String>,
    owner: Option<OwnerReference>,
}

impl SliceMeta {
    /// Labels and owner of `svc`'s slices.
    pub fn of(svc: &Service) -> Self {
        let key = Key::of(svc);
        let reserved = [labels::SERVICE_NAME, labels::MANAGED_BY, labels::HEADLESS];
        let mut l: BTreeMap<String, String> = svc
            .metadata
            .labels
            .iter()
            .flatten()
            .filter(|(k, _)| !reserved.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        l.insert(labels::SERVICE_NAME.into(), key.name.clone());
        l.insert(labels::MANAGED_BY.into(), ENDPOINTSLICE_MANAGER.into());
        // Upstream's `isServiceIPSet`: `None`, and also a Service with no
        // ClusterIP at all, is headless here.
        let no_ip = svc
            .spec
            .as_ref()
            .is_none_or(|s| s.cluster_ip.as_deref().is_none_or(str::is_empty));
        if is_headless(svc) || no_ip {
            l.insert(labels::HEADLESS.into(), String::new());
        }
        let owner = svc.metadata.uid.clone().map(|uid| OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: key.name.clone(),
            uid,
            controller: Some(true),
            block_owner_deletion: Some(true),
        });
        SliceMeta {
            key,
            labels: l,
            owner,
        }
    }

    /// Whether a slice has the labels and owner it should have.
    fn is_current(&self, slice: &EndpointSlice) -> bool {
        slice.metadata.labels.as_ref() == Some(&self.labels)
            && slice.metadata.owner_references.clone().unwrap_or_default()
                == self.owner.iter().cloned().collect::<Vec<_>>()
    }

    /// Whether a slice belongs to this very Service (not to an earlier one of
    /// the same name that is being garbage collected).
    fn owns(&self, slice: &EndpointSlice) -> bool {
        match &self.owner {
            None => true,
            Some(o) => slice
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.uid == o.uid),
        }
    }

    fn stamp(&self, slice: &mut EndpointSlice) {
        slice.metadata.labels = Some(self.labels.clone());
        slice.metadata.owner_references = self.owner.clone().map(|o| vec![o]);
    }

    fn new_slice(&self, t: AddressType, ports: Vec<crate::k8s::EndpointPort>) -> EndpointSlice {
        let mut s = EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", self.key.name)),
                namespace: Some(self.key.namespace.clone()),
                ..Default::default()
            },
            address_type: t.as_str().to_owned(),
            endpoints: Vec::new(),
            ports: Some(ports),
        };
        self.stamp(&mut s);
        s
    }
}
