//! The ruleset as Portico believes it is installed, and the transactions
//! that change it: a full sync writes everything, a partial sync only what
//! a set of Services changed.
//!
//! ```text
//!  per Service: Rendered ──┐
//!                          ├─> entries  (owners per entry point; the oldest Service wins)
//!                          ├─> shared   (reference-counted set elements)
//!                          └─> chains, sets, pick chains
//! ```

use crate::names::{Family, Pick, PickEntry, PickSlots};
use crate::render::{
    Chain, Config, ConntrackTarget, Element, Entry, Rendered, Set, render_service, render_static,
};
use crate::tx::{SetKind, Transaction};
use portico_catalog::{Catalog, Endpoint, Key, Seniority, ServiceInfo};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

/// What exists in one family's table, as listed from the kernel (no
/// elements: listing them costs as much as writing them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Existing {
    /// Chain names.
    pub chains: BTreeSet<String>,
    /// The hooks of base chains: `type hook priority` (see
    /// [`crate::names::hook_key`]).
    pub hooks: BTreeMap<String, String>,
    /// Set and map names.
    pub sets: BTreeMap<String, SetKind>,
    /// The declared sizes of the sets and maps that have one.
    pub sizes: BTreeMap<String, u32>,
}

/// What a full sync does with the static sets and maps that exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaticSets {
    /// Flush each and refill it in the same transaction, so lookups answer
    /// throughout; only a hash set whose elements no longer fit its size
    /// (or that is far larger than they need) is deleted and recreated,
    /// which its lookups survive too (an interval set's would not: a new
    /// one misses until its transaction is committed, measured in
    /// `README.md`). Pick chains that exist are kept as they are.
    Keep,
    /// Delete and recreate every one, and write the pick chains again:
    /// after a failed full sync, in case the kernel holds a set under the
    /// same name with another declaration (which it refuses to redeclare).
    Recreate,
}

/// Pick chains for up to this many endpoints exist from the first full
/// sync on (for the common kinds), so that an endpoint change never has
/// to create one: binding a new chain to the backends maps makes the
/// kernel walk every element of them (about 100 ms at 500,000).
pub const PRECREATED_PICKS: usize = 16;

/// The smallest size a static hash set or map is declared with. A full
/// sync declares each one with room for twice the elements it writes (a
/// power of two, at least this): the kernel then allocates its hash table
/// once, where growing it while 100,000 elements arrive costs about a
/// tenth of nft's time. A partial sync that would fill a set beyond its
/// size is done as a full sync.
pub const MIN_SET_SIZE: u32 = 1024;

/// The size a static set is declared with when a full sync writes `count`
/// elements into it (unless it keeps the size it has, see
/// [`keeps_size`]).
pub fn set_size(count: usize) -> u32 {
    u32::try_from(count.saturating_mul(2))
        .unwrap_or(u32::MAX)
        .max(MIN_SET_SIZE)
        .checked_next_power_of_two()
        .unwrap_or(u32::MAX)
}

/// Whether a hash set declared with `size` keeps that size when a full
/// sync writes `count` elements into it: they fit, and the set is no more
/// than four times the size [`set_size`] would give it. So it grows when
/// they no longer fit and shrinks when they are a sixteenth of its size
/// or less; a set just grown or shrunk keeps its size until its elements
/// double, or fall to a quarter.
pub fn keeps_size(size: u32, count: usize) -> bool {
    count <= size as usize && u64::from(size) <= 4 * u64::from(set_size(count))
}

/// The pick chains every table has.
pub fn precreated_picks() -> impl Iterator<Item = (Family, Pick)> {
    Family::ALL.into_iter().flat_map(|family| {
        [
            (PickEntry::Address, PickSlots::Cluster),
            (PickEntry::Address, PickSlots::Masquerade),
            (PickEntry::NodePort, PickSlots::Cluster),
            (PickEntry::NodePort, PickSlots::Masquerade),
        ]
        .into_iter()
        .flat_map(move |(entry, slots)| {
            (1..=PRECREATED_PICKS).map(move |n| (family, Pick { entry, slots, n }))
        })
    })
}

/// The installed ruleset, per Service.
#[derive(Clone, Debug, Default)]
pub struct Model {
    services: HashMap<Key, Installed>,
    /// The configuration of the last full sync's rendering.
    rendered_with: Option<Config>,
    /// Who claims each entry point, the winner first.
    owners: HashMap<Entry, BTreeSet<Seniority>>,
    shared: HashMap<Element, u32>,
    picks: BTreeSet<(Family, Pick)>,
    elements: usize,
    chains: usize,
    static_chains: usize,
    /// Static hash sets: (elements, declared size).
    sizes: HashMap<(Family, &'static str), (usize, u32)>,
}

/// What a Service contributes, and what a full sync rendered it from.
#[derive(Clone, Debug)]
struct Installed {
    rules: Arc<Rendered>,
    /// Set by a full sync (under `Model::rendered_with`), cleared when a
    /// partial sync renders the Service again: a later full sync reuses
    /// `rules` while the catalog holds the same allocations.
    inputs: Option<Inputs>,
}

/// The catalog entries a Service was rendered from.
#[derive(Clone, Debug)]
struct Inputs {
    service: Arc<ServiceInfo>,
    endpoints: Option<Arc<[Endpoint]>>,
}

impl Inputs {
    /// The same allocations (so the same content: the catalog replaces an
    /// entry when it changes).
    fn same(&self, other: &Inputs) -> bool {
        Arc::ptr_eq(&self.service, &other.service)
            && match (&self.endpoints, &other.endpoints) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// The UDP flows to forget after a sync: (original destination, endpoint).
pub type StaleFlows = Vec<(ConntrackTarget, SocketAddr)>;

/// What a sync changes of UDP flows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpChanges {
    /// Flows whose endpoint stopped serving.
    pub stale: StaleFlows,
    /// Entry points that had no serving endpoint and now have one: their
    /// untranslated flows (made while nothing served them) must go, or
    /// they would keep bypassing the new rules.
    pub fresh: Vec<ConntrackTarget>,
}

impl UdpChanges {
    /// From the flows of one Service (or of everything) before and after.
    pub fn between(
        old: &[(ConntrackTarget, SocketAddr)],
        new: &[(ConntrackTarget, SocketAddr)],
    ) -> Self {
        let mut c = UdpChanges::default();
        c.add(old, new);
        c
    }

    /// Adds what changed from `old` to `new` (hashed: a full sync compares
    /// every UDP flow of the node).
    fn add(
        &mut self,
        old: &[(ConntrackTarget, SocketAddr)],
        new: &[(ConntrackTarget, SocketAddr)],
    ) {
        let kept: HashSet<&(ConntrackTarget, SocketAddr)> = new.iter().collect();
        self.stale
            .extend(old.iter().filter(|f| !kept.contains(f)).copied());
        let served: HashSet<ConntrackTarget> = old.iter().map(|(t, _)| *t).collect();
        self.fresh
            .extend(new.iter().map(|(t, _)| *t).filter(|t| !served.contains(t)));
    }

    /// Each flow and each entry point once, in order.
    pub fn tidy(&mut self) {
        self.stale.sort_unstable();
        self.stale.dedup();
        self.fresh.sort_unstable();
        self.fresh.dedup();
    }
}

impl Model {
    /// The number of chains installed (static, pick and per-Service).
    pub fn chain_count(&self) -> usize {
        self.chains
    }

    /// The number of map and set elements installed (not counting the
    /// clients in affinity sets).
    pub fn element_count(&self) -> usize {
        self.elements
    }

    /// Whether a static set holds more elements than it was declared for
    /// (after a partial transaction that the kernel would refuse).
    pub fn outgrown(&self) -> bool {
        self.sizes
            .values()
            .any(|&(count, size)| count > size as usize)
    }

    /// The number of Services with rules.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Every UDP flow the ruleset NATs: (original destination, endpoint).
    pub fn udp_flows(&self) -> impl Iterator<Item = (ConntrackTarget, SocketAddr)> + '_ {
        self.services
            .values()
            .flat_map(|s| s.rules.udp.iter().copied())
    }

    /// What one Service contributed.
    pub fn service(&self, key: &Key) -> Option<&Rendered> {
        self.services.get(key).map(|s| &*s.rules)
    }

    /// Services that claim an entry point another Service holds.
    pub fn conflicts(&self) -> Vec<(Entry, Vec<Key>)> {
        let mut out: Vec<(Entry, Vec<Key>)> = self
            .owners
            .iter()
            .filter(|(_, o)| o.len() > 1)
            .map(|(e, o)| (*e, o.iter().map(|s| s.key.clone()).collect()))
            .collect();
        out.sort();
        out
    }

    /// Renders every Service of the catalog.
    pub fn build(cfg: &Config, catalog: &Catalog) -> Model {
        Model::rebuild(cfg, catalog, &Model::default())
    }

    /// Renders every Service of the catalog, reusing the rules `previous`
    /// rendered for Services whose catalog entries are the very same
    /// (rendering is pure: the same configuration, Service and endpoints
    /// give the same rules).
    pub fn rebuild(cfg: &Config, catalog: &Catalog, previous: &Model) -> Model {
        let reuse = previous.rendered_with.as_ref() == Some(cfg);
        let mut m = Model {
            rendered_with: Some(cfg.clone()),
            ..Model::default()
        };
        for svc in catalog.services() {
            let key = svc.key();
            let inputs = Inputs {
                service: Arc::clone(svc),
                endpoints: catalog.endpoints_shared(&key).cloned(),
            };
            let rules = match previous.services.get(&key) {
                Some(s) if reuse && s.inputs.as_ref().is_some_and(|i| i.same(&inputs)) => {
                    Arc::clone(&s.rules)
                }
                _ => Arc::new(render_service(cfg, svc, catalog.endpoints(&key))),
            };
            m.insert(
                key,
                Installed {
                    rules,
                    inputs: Some(inputs),
                },
            );
        }
        m
    }

    fn insert(&mut self, key: Key, installed: Installed) {
        let r = &installed.rules;
        let claimant = r.seniority.clone();
        for (entry, _) in &r.entries {
            self.owners
                .entry(*entry)
                .or_default()
                .insert(claimant.clone());
        }
        for el in &r.shared {
            match self.shared.get_mut(el) {
                Some(n) => *n += 1,
                None => {
                    self.shared.insert(el.clone(), 1);
                }
            }
        }
        for p in &r.picks {
            self.picks.insert(*p);
        }
        self.services.insert(key, installed);
    }

    /// The elements an entry has now (its winner's).
    fn entry_elements(&self, entry: &Entry) -> &[Element] {
        self.owners
            .get(entry)
            .and_then(|o| o.first())
            .and_then(|s| self.services.get(&s.key))
            .and_then(|s| s.rules.entry(entry))
            .unwrap_or(&[])
    }

    /// A full sync: rewrites every chain (but pick chains that exist),
    /// replaces the elements of the static sets and maps (see
    /// [`StaticSets`]), keeps affinity sets and their clients, and deletes
    /// what is no longer wanted.
    pub fn full_transaction(
        &mut self,
        cfg: &Config,
        existing: &BTreeMap<Family, Existing>,
        static_sets: StaticSets,
    ) -> Transaction {
        let mut tx = Transaction::new();
        let mut chains: Vec<Chain> = Vec::new();
        // (family, name, declaration, static)
        let mut sets: Vec<(Family, String, crate::tx::SetDecl, bool)> = Vec::new();
        let mut static_names: Vec<(Family, &'static str)> = Vec::new();
        let mut elements: Vec<&Element> = Vec::new();
        let statics: Vec<_> = Family::ALL
            .iter()
            .map(|&f| (f, render_static(cfg, f)))
            .collect();
        for (family, s) in &statics {
            chains.extend(s.chains.iter().cloned());
            for (name, decl) in &s.sets {
                sets.push((*family, (*name).to_owned(), decl.clone(), true));
                static_names.push((*family, name));
            }
            elements.extend(&s.elements);
        }
        self.static_chains = chains.len();
        self.picks.extend(precreated_picks());
        let first_pick = chains.len();
        for &(family, pick) in &self.picks {
            chains.push(Chain {
                family,
                name: pick.name(),
                base: None,
                rules: pick.rules(family),
            });
        }
        let picks = first_pick..chains.len();
        let mut keys: Vec<&Key> = self.services.keys().collect();
        keys.sort();
        for k in &keys {
            let r = &self.services[*k].rules;
            chains.extend(r.chains.iter().cloned());
            for s in &r.sets {
                sets.push((s.family, s.name.clone(), s.decl.clone(), false));
            }
        }
        let mut entries: Vec<&Entry> = self.owners.keys().collect();
        entries.sort();
        for e in entries {
            elements.extend(self.entry_elements(e));
        }
        let mut shared: Vec<&Element> = self.shared.keys().collect();
        shared.sort();
        elements.extend(shared);
        // One `add element` command per set (and thousand elements): nft
        // pays for every command, and entry order alternates between the
        // dispatch and slot maps. Each set keeps entry order.
        let mut by_set: BTreeMap<(Family, &str), Vec<&Element>> = BTreeMap::new();
        for el in elements {
            by_set.entry((el.family, el.set)).or_default().push(el);
        }
        let no_existing = Existing::default();
        let exists = |f: Family| existing.get(&f).unwrap_or(&no_existing);
        // Static sets that exist are kept (flushed and refilled) unless
        // they are to be recreated: all of them, or those of another kind,
        // or hash sets whose size does not suit what they will hold.
        // Hash sets get a size; interval sets are trees, left as they are.
        let mut sizes = HashMap::new();
        let mut recreate: BTreeSet<(Family, &str)> = BTreeSet::new();
        for ((family, _, decl, _), &(_, name)) in sets.iter_mut().zip(&static_names) {
            let ex = exists(*family);
            let kind = ex.sets.get(name);
            let mut keep = static_sets == StaticSets::Keep && kind == Some(&decl.kind);
            if !decl.flags.contains(&"interval") {
                let count = by_set.get(&(*family, name)).map_or(0, Vec::len);
                let size = match ex.sizes.get(name) {
                    Some(&size) if keep && keeps_size(size, count) => size,
                    _ => {
                        keep = false;
                        set_size(count)
                    }
                };
                decl.size = Some(size);
                sizes.insert((*family, name), (count, size));
            }
            if kind.is_some() && !keep {
                recreate.insert((*family, name));
            }
        }
        let elements: Vec<&Element> = by_set.into_values().flatten().collect();

        // A pick chain's rules follow from its name: one that exists is
        // kept as it is (when it reads no set that is recreated). Writing
        // its rules again would make the kernel check every element of
        // the maps they read, the old ones too while a kept map is
        // refilled: about 150 ms of a full sync at 100,000 endpoints.
        let kept_picks: BTreeSet<(Family, &str)> = chains[picks]
            .iter()
            .filter(|c| {
                let ex = exists(c.family);
                static_sets == StaticSets::Keep
                    && ex.chains.contains(&c.name)
                    && !ex.hooks.contains_key(&c.name)
                    && !c.rules.iter().any(|r| {
                        r.split_whitespace()
                            .filter_map(|w| w.strip_prefix('@'))
                            .any(|set| recreate.contains(&(c.family, set)))
                    })
            })
            .map(|c| (c.family, c.name.as_str()))
            .collect();
        let wanted: BTreeSet<(Family, &str)> =
            chains.iter().map(|c| (c.family, c.name.as_str())).collect();
        let wanted_sets: BTreeSet<(Family, &str)> =
            sets.iter().map(|(f, n, _, _)| (*f, n.as_str())).collect();

        let rules: usize = chains.iter().map(|c| c.rules.len()).sum();
        tx.reserve(elements.len() + rules + 3 * chains.len() + 2 * sets.len());
        for family in Family::ALL {
            tx.add_table(family);
        }
        // Nothing may refer to a set that is deleted: every chain but the
        // kept pick chains is flushed first (and refilled, or deleted when
        // stale).
        for family in Family::ALL {
            for name in &exists(family).chains {
                if !kept_picks.contains(&(family, name.as_str())) {
                    tx.flush_chain(family, name);
                }
            }
        }
        // A chain whose hook differs from what is wanted (an earlier
        // version of Portico, or a hand-made change) is replaced.
        for c in &chains {
            let ex = exists(c.family);
            let wanted_hook = c.base.as_deref().and_then(crate::names::hook_key);
            if ex.chains.contains(&c.name) && ex.hooks.get(&c.name) != wanted_hook.as_ref() {
                tx.delete_chain(c.family, &c.name);
            }
        }
        for &(family, name) in &recreate {
            if let Some(&kind) = exists(family).sets.get(name) {
                tx.delete_set(family, name, kind);
            }
        }
        for (family, name, decl, is_static) in &sets {
            tx.add_set(*family, name, decl.clone());
            // A kept static set loses its elements in the transaction that
            // adds them again: lookups see the old ones until it commits.
            if *is_static
                && exists(*family).sets.contains_key(name)
                && !recreate.contains(&(*family, name.as_str()))
            {
                tx.flush_set(*family, name, decl.kind);
            }
        }
        for c in &chains {
            tx.add_chain(c.family, &c.name, c.base.clone());
        }
        for c in &chains {
            if kept_picks.contains(&(c.family, c.name.as_str())) {
                continue;
            }
            for rule in &c.rules {
                tx.add_rule(c.family, &c.name, rule.as_str());
            }
        }
        for el in &elements {
            tx.add_shared_element(el.family, el.set, &el.key, el.value.as_ref());
        }
        for family in Family::ALL {
            let ex = exists(family);
            for name in &ex.chains {
                if !wanted.contains(&(family, name.as_str())) {
                    tx.delete_chain(family, name);
                }
            }
            for (name, kind) in &ex.sets {
                if !wanted_sets.contains(&(family, name.as_str())) {
                    tx.delete_set(family, name, *kind);
                }
            }
        }
        self.elements = elements.len();
        self.chains = chains.len();
        self.sizes = sizes;
        tx
    }

    /// Replaces the rules of some Services (deleted ones have no
    /// `Rendered`), returning the transaction that makes the kernel follow
    /// and what changed of UDP flows. Unchanged chains are
    /// not rewritten; pick chains are created when first needed and only
    /// removed by a full sync.
    pub fn partial_transaction(
        &mut self,
        updates: Vec<(Key, Option<Rendered>)>,
    ) -> (Transaction, UdpChanges) {
        let mut tx = Transaction::new();
        let mut udp = UdpChanges::default();
        let mut new_sets: Vec<Set> = Vec::new();
        let mut refill: Vec<Chain> = Vec::new();
        let mut new_picks: Vec<(Family, Pick)> = Vec::new();
        let mut deleted_chains: Vec<(Family, String)> = Vec::new();
        let mut deleted_sets: Vec<(Family, String)> = Vec::new();
        let mut touched: BTreeSet<Entry> = BTreeSet::new();
        let mut before: HashMap<Entry, Vec<Element>> = HashMap::new();
        let mut shared_delta: BTreeMap<Element, i64> = BTreeMap::new();

        for (key, new) in &updates {
            let old = self.services.get(key).map(|s| &*s.rules);
            for (entry, _) in old
                .iter()
                .flat_map(|r| &r.entries)
                .chain(new.iter().flat_map(|r| &r.entries))
            {
                if touched.insert(*entry) {
                    before.insert(*entry, self.entry_elements(entry).to_vec());
                }
            }
            let old_chains: &[Chain] = old.map_or(&[], |r| &r.chains);
            let new_chains: &[Chain] = new.as_ref().map_or(&[], |r| &r.chains);
            for c in new_chains {
                match old_chains
                    .iter()
                    .find(|o| o.family == c.family && o.name == c.name)
                {
                    Some(o) if o.rules == c.rules => {}
                    _ => refill.push(c.clone()),
                }
            }
            for o in old_chains {
                if !new_chains
                    .iter()
                    .any(|c| c.family == o.family && c.name == o.name)
                {
                    deleted_chains.push((o.family, o.name.clone()));
                }
            }
            let old_sets: &[Set] = old.map_or(&[], |r| &r.sets);
            let new_sets_of: &[Set] = new.as_ref().map_or(&[], |r| &r.sets);
            for s in new_sets_of {
                if !old_sets.contains(s) {
                    new_sets.push(s.clone());
                }
            }
            for s in old_sets {
                if !new_sets_of
                    .iter()
                    .any(|n| n.family == s.family && n.name == s.name)
                {
                    deleted_sets.push((s.family, s.name.clone()));
                }
            }
            for el in old.iter().flat_map(|r| &r.shared) {
                *shared_delta.entry(el.clone()).or_default() -= 1;
            }
            for el in new.iter().flat_map(|r| &r.shared) {
                *shared_delta.entry(el.clone()).or_default() += 1;
            }
            for p in new.iter().flat_map(|r| &r.picks) {
                if !self.picks.contains(p) && !new_picks.contains(p) {
                    new_picks.push(*p);
                }
            }
            let old_udp: &[(ConntrackTarget, SocketAddr)] = old.map_or(&[], |r| &r.udp);
            let new_udp: &[(ConntrackTarget, SocketAddr)] = new.as_ref().map_or(&[], |r| &r.udp);
            udp.add(old_udp, new_udp);
        }

        // Apply the updates to the model.
        for (key, new) in updates {
            if let Some(old) = self.services.remove(&key) {
                let claimant = old.rules.seniority.clone();
                for (entry, _) in &old.rules.entries {
                    if let Some(o) = self.owners.get_mut(entry) {
                        o.remove(&claimant);
                        if o.is_empty() {
                            self.owners.remove(entry);
                        }
                    }
                }
            }
            if let Some(r) = new {
                let claimant = r.seniority.clone();
                for (entry, _) in &r.entries {
                    self.owners
                        .entry(*entry)
                        .or_default()
                        .insert(claimant.clone());
                }
                // Rendered outside a full sync: not reused by the next one.
                self.services.insert(
                    key,
                    Installed {
                        rules: Arc::new(r),
                        inputs: None,
                    },
                );
            }
        }

        // Element changes.
        let mut deletes: Vec<Element> = Vec::new();
        let mut adds: Vec<Element> = Vec::new();
        for entry in &touched {
            let old = before.remove(entry).unwrap_or_default();
            let new = self.entry_elements(entry);
            for o in &old {
                if !new.contains(o) {
                    deletes.push(o.clone());
                }
            }
            for n in new {
                if !old.contains(n) {
                    adds.push(n.clone());
                }
            }
        }
        for (el, delta) in shared_delta {
            let count = self.shared.get(&el).copied().unwrap_or(0);
            let next = (i64::from(count) + delta).max(0);
            if count == 0 && next > 0 {
                adds.push(el.clone());
            } else if count > 0 && next == 0 {
                deletes.push(el.clone());
            }
            if next == 0 {
                self.shared.remove(&el);
            } else {
                self.shared
                    .insert(el, u32::try_from(next).unwrap_or(u32::MAX));
            }
        }
        // A key whose value changes is deleted, then added again.
        let mut deleted_keys: BTreeSet<(Family, &str, &str)> = BTreeSet::new();
        for d in &deletes {
            deleted_keys.insert((d.family, d.set, &*d.key));
        }
        self.elements = (self.elements + adds.len()).saturating_sub(deletes.len());
        for a in &adds {
            if let Some((count, _)) = self.sizes.get_mut(&(a.family, a.set)) {
                *count += 1;
            }
        }
        for d in &deletes {
            if let Some((count, _)) = self.sizes.get_mut(&(d.family, d.set)) {
                *count = count.saturating_sub(1);
            }
        }

        for s in &new_sets {
            tx.add_set(s.family, &s.name, s.decl.clone());
        }
        let picks: Vec<Chain> = new_picks
            .iter()
            .map(|&(family, p)| Chain {
                family,
                name: p.name(),
                base: None,
                rules: p.rules(family),
            })
            .collect();
        for c in picks.iter().chain(&refill) {
            tx.add_chain(c.family, &c.name, None);
        }
        for c in &refill {
            tx.flush_chain(c.family, &c.name);
        }
        for (family, name) in &deleted_chains {
            tx.flush_chain(*family, name);
        }
        for d in &deletes {
            tx.delete_element(d.family, d.set, &d.key);
        }
        for c in picks.iter().chain(&refill) {
            for rule in &c.rules {
                tx.add_rule(c.family, &c.name, rule.as_str());
            }
        }
        for a in &adds {
            tx.add_shared_element(a.family, a.set, &a.key, a.value.as_ref());
        }
        for (family, name) in &deleted_chains {
            tx.delete_chain(*family, name);
        }
        for (family, name) in &deleted_sets {
            tx.delete_set(*family, name, SetKind::Set);
        }
        self.picks.extend(new_picks.iter().copied());
        self.recount();
        (tx, udp)
    }

    /// Counts chains from scratch (after a partial sync).
    fn recount(&mut self) {
        self.chains = self.static_chains
            + self.picks.len()
            + self
                .services
                .values()
                .map(|s| s.rules.chains.len())
                .sum::<usize>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_set_keeps_its_size_until_it_is_too_small_or_sixteen_times_too_large() {
        assert_eq!(set_size(0), MIN_SET_SIZE);
        assert_eq!(set_size(513), 2048);
        assert!(keeps_size(1024, 0));
        assert!(keeps_size(1024, 1024));
        assert!(!keeps_size(1024, 1025));
        // Grown to 4,096 for 1,025 elements, it keeps that size for any
        // number up to 4,096.
        assert!(keeps_size(4096, 1));
        assert!(keeps_size(4096, 4096));
        assert!(keeps_size(16384, 1025));
        assert!(!keeps_size(16384, 1024));
        assert!(!keeps_size(16384, 0));
    }
}
