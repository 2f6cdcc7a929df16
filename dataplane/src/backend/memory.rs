//! An in-memory nft: for tests, and for `portico explain`, which traces
//! packets through the rules it holds.

use super::Backend;
use crate::model::Existing;
use crate::names::{Family, TABLE};
use crate::tx::{Op, SetDecl, SetKind, Transaction};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MemoryChain {
    base: Option<String>,
    rules: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct MemorySet {
    decl: SetDecl,
    elements: BTreeMap<String, Option<String>>,
    /// A size declared again in the transaction: it holds from the commit
    /// on (until then, the old size limits the elements).
    next_size: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MemoryTable {
    chains: BTreeMap<String, MemoryChain>,
    sets: BTreeMap<String, MemorySet>,
}

/// What a packet meets in Portico's tables: [`MemoryNft::view`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RulesView {
    /// By family (`ip`, `ip6`).
    pub tables: BTreeMap<String, TableView>,
}

/// One family's table.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableView {
    /// Chains by name.
    pub chains: BTreeMap<String, ChainView>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, SetView>,
}

/// A chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainView {
    /// `type … hook … priority …` of a base chain.
    pub base: Option<String>,
    /// Its rules, in order.
    pub rules: Vec<String>,
}

/// A set (or map, with values).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SetView {
    /// A map (its elements have values).
    pub map: bool,
    /// Key to value.
    pub elements: BTreeMap<String, Option<String>>,
}

/// An in-memory nft: applies transactions atomically with nft's rules
/// (objects must exist before use, a chain must be empty and unreferenced
/// to be deleted, an element's key must not exist with another value) and
/// dumps its state as sorted text.
#[derive(Clone, Debug, Default)]
pub struct MemoryNft {
    tables: BTreeMap<Family, MemoryTable>,
    last: Option<Transaction>,
    applied: usize,
    fail_next: Option<String>,
}

impl MemoryNft {
    /// An empty fake.
    pub fn new() -> Self {
        MemoryNft::default()
    }

    /// The last transaction applied (or refused).
    pub fn last(&self) -> Option<&Transaction> {
        self.last.as_ref()
    }

    /// How many transactions were applied.
    pub fn applied(&self) -> usize {
        self.applied
    }

    /// Makes the next transaction fail with `message`.
    pub fn fail_next(&mut self, message: &str) {
        self.fail_next = Some(message.to_owned());
    }

    /// The rules of a chain.
    pub fn rules(&self, family: Family, chain: &str) -> Option<&[String]> {
        self.tables
            .get(&family)?
            .chains
            .get(chain)
            .map(|c| c.rules.as_slice())
    }

    /// The elements of a set or map: key to value.
    pub fn elements(&self, family: Family, set: &str) -> Option<&BTreeMap<String, Option<String>>> {
        self.tables.get(&family)?.sets.get(set).map(|s| &s.elements)
    }

    /// Every chain name of a family's table.
    pub fn chains(&self, family: Family) -> Vec<String> {
        self.tables
            .get(&family)
            .map(|t| t.chains.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// What a packet meets: every chain with its rules, every set and map
    /// with its elements (not their declarations). `portico node` serves
    /// it at `/rules`; `portico explain` traces packets through it.
    pub fn view(&self) -> RulesView {
        let tables = self
            .tables
            .iter()
            .map(|(family, t)| {
                let chains = t
                    .chains
                    .iter()
                    .map(|(name, c)| {
                        let view = ChainView {
                            base: c.base.clone(),
                            rules: c.rules.clone(),
                        };
                        (name.clone(), view)
                    })
                    .collect();
                let sets = t
                    .sets
                    .iter()
                    .map(|(name, s)| {
                        let view = SetView {
                            map: s.decl.kind == SetKind::Map,
                            elements: s.elements.clone(),
                        };
                        (name.clone(), view)
                    })
                    .collect();
                (family.nft().to_owned(), TableView { chains, sets })
            })
            .collect();
        RulesView { tables }
    }

    /// The in-memory nftables holding a [`RulesView`] (for tracing: the
    /// sets' declarations are not carried, only their kind).
    pub fn from_view(view: &RulesView) -> Result<MemoryNft> {
        let mut tables = BTreeMap::new();
        for (family, t) in &view.tables {
            let family = match family.as_str() {
                "ip" => Family::Ipv4,
                "ip6" => Family::Ipv6,
                other => {
                    return Err(Error::Nft(format!("rules view: no family {other:?}")));
                }
            };
            let table = MemoryTable {
                chains: t
                    .chains
                    .iter()
                    .map(|(name, c)| {
                        let chain = MemoryChain {
                            base: c.base.clone(),
                            rules: c.rules.clone(),
                        };
                        (name.clone(), chain)
                    })
                    .collect(),
                sets: t
                    .sets
                    .iter()
                    .map(|(name, s)| {
                        let mut decl = SetDecl::set(String::new());
                        if s.map {
                            decl.kind = SetKind::Map;
                        }
                        let set = MemorySet {
                            decl,
                            elements: s.elements.clone(),
                            next_size: None,
                        };
                        (name.clone(), set)
                    })
                    .collect(),
            };
            tables.insert(family, table);
        }
        Ok(MemoryNft {
            tables,
            ..MemoryNft::default()
        })
    }

    /// The state as text: tables, then chains and sets by name, rules in
    /// order, elements sorted.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (family, t) in &self.tables {
            let _ = writeln!(out, "table {family} {TABLE}");
            for (name, s) in &t.sets {
                let kind = match s.decl.kind {
                    SetKind::Set => "set",
                    SetKind::Map => "map",
                };
                let _ = writeln!(out, "  {kind} {name} {}", s.decl);
                for (k, v) in &s.elements {
                    match v {
                        Some(v) => {
                            let _ = writeln!(out, "    {k} : {v}");
                        }
                        None => {
                            let _ = writeln!(out, "    {k}");
                        }
                    }
                }
            }
            for (name, c) in &t.chains {
                match &c.base {
                    Some(b) => {
                        let _ = writeln!(out, "  chain {name} {{ {b} }}");
                    }
                    None => {
                        let _ = writeln!(out, "  chain {name}");
                    }
                }
                for r in &c.rules {
                    let _ = writeln!(out, "    {r}");
                }
            }
        }
        out
    }

    fn apply_op(
        tables: &mut BTreeMap<Family, MemoryTable>,
        op: &Op,
    ) -> std::result::Result<(), String> {
        match op {
            Op::AddTable(f) => {
                tables.entry(*f).or_default();
            }
            Op::DeleteTable(f) => {
                tables
                    .remove(f)
                    .ok_or_else(|| format!("table {f} {TABLE} does not exist"))?;
            }
            Op::AddChain { family, name, base } => {
                let t = get(tables, *family)?;
                match t.chains.get(name) {
                    Some(c) if &c.base != base => {
                        return Err(format!("chain {name} exists with another hook"));
                    }
                    Some(_) => {}
                    None => {
                        t.chains.insert(
                            name.clone(),
                            MemoryChain {
                                base: base.clone(),
                                rules: Vec::new(),
                            },
                        );
                    }
                }
            }
            Op::FlushChain { family, name } => {
                let t = get(tables, *family)?;
                t.chains
                    .get_mut(name)
                    .ok_or_else(|| format!("flush: no chain {name}"))?
                    .rules
                    .clear();
            }
            Op::DeleteChain { family, name } => {
                let t = get(tables, *family)?;
                let c = t
                    .chains
                    .get(name)
                    .ok_or_else(|| format!("delete: no chain {name}"))?;
                if !c.rules.is_empty() {
                    return Err(format!("delete: chain {name} is not empty"));
                }
                if let Some(user) = chain_users(t, name).next() {
                    return Err(format!("delete: chain {name} is used by {user}"));
                }
                t.chains.remove(name);
            }
            Op::AddRule {
                family,
                chain,
                rule,
            } => {
                let t = get(tables, *family)?;
                check_references(t, rule)?;
                t.chains
                    .get_mut(chain)
                    .ok_or_else(|| format!("add rule: no chain {chain}"))?
                    .rules
                    .push(rule.clone());
            }
            Op::AddSet { family, name, decl } => {
                let t = get(tables, *family)?;
                match t.sets.get_mut(name) {
                    // nft takes a new size (at the commit) and ignores
                    // another comment; anything else is refused.
                    Some(s)
                        if SetDecl {
                            size: s.decl.size,
                            comment: s.decl.comment,
                            ..decl.clone()
                        } != s.decl =>
                    {
                        return Err(format!("set {name} exists with another declaration"));
                    }
                    Some(s) => {
                        if decl.size.is_some() && decl.size != s.decl.size {
                            s.next_size = decl.size;
                        }
                    }
                    None => {
                        t.sets.insert(
                            name.clone(),
                            MemorySet {
                                decl: decl.clone(),
                                elements: BTreeMap::new(),
                                next_size: None,
                            },
                        );
                    }
                }
            }
            Op::FlushSet { family, name, kind } => {
                let t = get(tables, *family)?;
                let s = t
                    .sets
                    .get_mut(name)
                    .ok_or_else(|| format!("flush: no set {name}"))?;
                if s.decl.kind != *kind {
                    return Err(format!("flush: {name} is not a {kind:?}"));
                }
                s.elements.clear();
            }
            Op::DeleteSet { family, name, .. } => {
                let t = get(tables, *family)?;
                if !t.sets.contains_key(name) {
                    return Err(format!("delete: no set {name}"));
                }
                let at = format!("@{name}");
                if let Some((c, _)) = t
                    .chains
                    .iter()
                    .find(|(_, c)| c.rules.iter().any(|r| tokens(r).any(|tok| tok == at)))
                {
                    return Err(format!("delete: set {name} is used by chain {c}"));
                }
                t.sets.remove(name);
            }
            Op::AddElement {
                family,
                set,
                key,
                value,
            } => {
                let t = get(tables, *family)?;
                if let Some(v) = value {
                    check_references(t, v)?;
                }
                let s = t
                    .sets
                    .get_mut(*set)
                    .ok_or_else(|| format!("add element: no set {set}"))?;
                if (s.decl.kind == SetKind::Map) != value.is_some() {
                    return Err(format!("add element {key}: wrong shape for {set}"));
                }
                if let Some(size) = s.decl.size
                    && !s.elements.contains_key(&**key)
                    && s.elements.len() >= size as usize
                {
                    return Err(format!(
                        "add element {key}: {set} is full (Too many open files in system)"
                    ));
                }
                match s.elements.get(&**key) {
                    Some(v) if v.as_deref() != value.as_deref() => {
                        return Err(format!("add element: {key} exists in {set} (File exists)"));
                    }
                    _ => {
                        s.elements
                            .insert(key.to_string(), value.as_deref().map(str::to_owned));
                    }
                }
            }
            Op::DeleteElement { family, set, key } => {
                let t = get(tables, *family)?;
                t.sets
                    .get_mut(*set)
                    .ok_or_else(|| format!("delete element: no set {set}"))?
                    .elements
                    .remove(&**key)
                    .ok_or_else(|| format!("delete element: no {key} in {set}"))?;
            }
        }
        Ok(())
    }
}

fn get(
    tables: &mut BTreeMap<Family, MemoryTable>,
    family: Family,
) -> std::result::Result<&mut MemoryTable, String> {
    tables
        .get_mut(&family)
        .ok_or_else(|| format!("table {family} {TABLE} does not exist"))
}

/// The words of a rule or value, without the punctuation of vmaps.
fn tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
        .map(|t| t.trim_end_matches([',', '}']).trim_start_matches('{'))
}

/// Chains and sets a rule or value refers to must exist.
fn check_references(t: &MemoryTable, text: &str) -> std::result::Result<(), String> {
    let mut words = tokens(text).peekable();
    while let Some(w) = words.next() {
        if let Some(set) = w.strip_prefix('@') {
            if !t.sets.contains_key(set) {
                return Err(format!("{text}: no set {set}"));
            }
        } else if matches!(w, "jump" | "goto")
            && let Some(target) = words.peek()
            && !t.chains.contains_key(*target)
        {
            return Err(format!("{text}: no chain {target}"));
        }
    }
    Ok(())
}

/// Rules and map elements that jump to a chain.
fn chain_users<'a>(t: &'a MemoryTable, name: &'a str) -> impl Iterator<Item = String> + 'a {
    let refers = move |text: &str| {
        let mut words = tokens(text);
        let mut prev = "";
        words.any(|w| {
            let hit = matches!(prev, "jump" | "goto") && w == name;
            prev = w;
            hit
        })
    };
    let rules = t.chains.iter().flat_map(move |(c, ch)| {
        ch.rules
            .iter()
            .filter(move |r| refers(r))
            .map(move |_| format!("chain {c}"))
    });
    let elements = t.sets.iter().flat_map(move |(s, set)| {
        set.elements
            .iter()
            .filter(move |(_, v)| v.as_deref().is_some_and(refers))
            .map(move |(k, _)| format!("element {k} of {s}"))
    });
    rules.chain(elements)
}

impl Backend for MemoryNft {
    fn apply(&mut self, tx: &Transaction) -> Result<()> {
        self.last = Some(tx.clone());
        tx.check()?;
        if let Some(message) = self.fail_next.take() {
            return Err(Error::Fake(message));
        }
        let mut next = self.tables.clone();
        for op in tx.ops() {
            MemoryNft::apply_op(&mut next, op).map_err(Error::Fake)?;
        }
        for set in next.values_mut().flat_map(|t| t.sets.values_mut()) {
            if let Some(size) = set.next_size.take() {
                set.decl.size = Some(size);
            }
        }
        self.tables = next;
        self.applied += 1;
        Ok(())
    }

    fn list(&mut self, family: Family) -> Result<Existing> {
        Ok(self
            .tables
            .get(&family)
            .map(|t| Existing {
                chains: t.chains.keys().cloned().collect(),
                hooks: t
                    .chains
                    .iter()
                    .filter_map(|(n, c)| {
                        Some((n.clone(), crate::names::hook_key(c.base.as_deref()?)?))
                    })
                    .collect(),
                sets: t
                    .sets
                    .iter()
                    .map(|(n, s)| (n.clone(), s.decl.kind))
                    .collect(),
                sizes: t
                    .sets
                    .iter()
                    .filter_map(|(n, s)| Some((n.clone(), s.decl.size?)))
                    .collect(),
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_refuses_what_nft_refuses_and_changes_nothing() {
        let mut nft = MemoryNft::new();
        let mut tx = Transaction::new();
        tx.add_table(Family::Ipv4);
        tx.add_chain(Family::Ipv4, "a", None);
        tx.add_chain(Family::Ipv4, "b", None);
        tx.add_rule(Family::Ipv4, "a", "goto b");
        tx.add_set(
            Family::Ipv4,
            "m",
            SetDecl::map("type inet_service : verdict"),
        );
        tx.add_element(Family::Ipv4, "m", "80", Some("goto b"));
        nft.apply(&tx).unwrap();
        let before = nft.dump();

        for bad in [
            |tx: &mut Transaction| tx.delete_chain(Family::Ipv4, "b"),
            |tx: &mut Transaction| tx.add_rule(Family::Ipv4, "a", "goto c"),
            |tx: &mut Transaction| tx.add_element(Family::Ipv4, "m", "80", Some("goto a")),
            |tx: &mut Transaction| tx.delete_element(Family::Ipv4, "m", "81"),
            |tx: &mut Transaction| tx.flush_chain(Family::Ipv6, "a"),
        ] {
            let mut tx = Transaction::new();
            tx.add_chain(Family::Ipv4, "new", None);
            bad(&mut tx);
            assert!(nft.apply(&tx).is_err(), "{tx}");
            assert_eq!(nft.dump(), before);
        }

        let mut tx = Transaction::new();
        tx.flush_chain(Family::Ipv4, "a");
        tx.delete_element(Family::Ipv4, "m", "80");
        tx.delete_chain(Family::Ipv4, "b");
        nft.apply(&tx).unwrap();
        assert_eq!(nft.chains(Family::Ipv4), vec!["a"]);
    }
}
