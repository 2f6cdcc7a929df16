//! A transaction: operations collected in order, rendered as the exact
//! script `nft -f -` runs in one atomic batch. The first invalid operation
//! (a name nft cannot read) is kept as the transaction's error and
//! returned when it is run; later operations are still recorded.

use crate::Error;
use crate::names::{Family, TABLE, TABLE_COMMENT, is_valid_name};
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

/// A set or a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetKind {
    /// `set`.
    Set,
    /// `map` (and verdict maps).
    Map,
}

impl SetKind {
    fn keyword(self) -> &'static str {
        match self {
            SetKind::Set => "set",
            SetKind::Map => "map",
        }
    }
}

/// The declaration of a set or map.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SetDecl {
    /// Set or map.
    pub kind: SetKind,
    /// `type …` or `typeof …`, with the data part of a map.
    pub type_: String,
    /// `interval`, `dynamic`, `timeout`.
    pub flags: Vec<&'static str>,
    /// The default timeout of elements.
    pub timeout: Option<Duration>,
    /// The most elements it may hold (the kernel then sizes its hash
    /// table once instead of growing it while elements arrive).
    pub size: Option<u32>,
    /// What it holds.
    pub comment: Option<&'static str>,
}

impl SetDecl {
    /// A set of `type_` (e.g. `type ipv4_addr`).
    pub fn set(type_: impl Into<String>) -> Self {
        SetDecl {
            kind: SetKind::Set,
            type_: type_.into(),
            flags: Vec::new(),
            timeout: None,
            size: None,
            comment: None,
        }
    }

    /// A map of `type_` (e.g. `type ipv4_addr : verdict`).
    pub fn map(type_: impl Into<String>) -> Self {
        SetDecl {
            kind: SetKind::Map,
            ..SetDecl::set(type_)
        }
    }

    /// With flags.
    pub fn flags(mut self, flags: &[&'static str]) -> Self {
        self.flags = flags.to_vec();
        self
    }

    /// With a comment.
    pub fn comment(mut self, comment: &'static str) -> Self {
        self.comment = Some(comment);
        self
    }

    /// With a default element timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// With a maximum number of elements.
    pub fn size(mut self, size: u32) -> Self {
        self.size = Some(size);
        self
    }
}

impl fmt::Display for SetDecl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{ {} ;", self.type_)?;
        if !self.flags.is_empty() {
            write!(f, " flags {} ;", self.flags.join(","))?;
        }
        if let Some(t) = self.timeout {
            write!(f, " timeout {} ;", crate::names::seconds(t))?;
        }
        if let Some(n) = self.size {
            write!(f, " size {n} ;")?;
        }
        if let Some(c) = self.comment {
            write!(f, " comment \"{c}\" ;")?;
        }
        f.write_str(" }")
    }
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `add table` (idempotent).
    AddTable(Family),
    /// `delete table` (with everything in it).
    DeleteTable(Family),
    /// `add chain` (idempotent); `base` is the hook declaration.
    AddChain {
        /// Family.
        family: Family,
        /// Name.
        name: String,
        /// `type … hook … priority …` for base chains.
        base: Option<String>,
    },
    /// `flush chain`: removes its rules.
    FlushChain {
        /// Family.
        family: Family,
        /// Name.
        name: String,
    },
    /// `delete chain`: it must be empty and unreferenced.
    DeleteChain {
        /// Family.
        family: Family,
        /// Name.
        name: String,
    },
    /// `add rule` (appends).
    AddRule {
        /// Family.
        family: Family,
        /// Chain.
        chain: String,
        /// The rule, in nft syntax.
        rule: String,
    },
    /// `add set` / `add map` (idempotent).
    AddSet {
        /// Family.
        family: Family,
        /// Name.
        name: String,
        /// Declaration.
        decl: SetDecl,
    },
    /// `flush set` / `flush map`: removes its elements.
    FlushSet {
        /// Family.
        family: Family,
        /// Name.
        name: String,
        /// Set or map.
        kind: SetKind,
    },
    /// `delete set` / `delete map`.
    DeleteSet {
        /// Family.
        family: Family,
        /// Name.
        name: String,
        /// Set or map.
        kind: SetKind,
    },
    /// `add element` (idempotent for an identical element).
    AddElement {
        /// Family.
        family: Family,
        /// Set or map (a static one: Portico adds elements to no other).
        set: &'static str,
        /// Key, in nft syntax.
        key: Arc<str>,
        /// Value of a map element.
        value: Option<Arc<str>>,
    },
    /// `delete element` (the element must exist).
    DeleteElement {
        /// Family.
        family: Family,
        /// Set or map (a static one).
        set: &'static str,
        /// Key.
        key: Arc<str>,
    },
}

impl Op {
    /// Whether this operation changes elements only.
    pub fn is_element(&self) -> bool {
        matches!(self, Op::AddElement { .. } | Op::DeleteElement { .. })
    }
}

/// Elements per `add element` / `delete element` command.
const ELEMENTS_PER_COMMAND: usize = 1000;

/// A transaction. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct Transaction {
    ops: Vec<Op>,
    error: Option<Error>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Transaction::default()
    }

    /// Makes room for `additional` more operations.
    pub fn reserve(&mut self, additional: usize) {
        self.ops.reserve(additional);
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether it holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The first error, if an operation was invalid.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// `Ok` when every operation was valid, else the first error.
    pub fn check(&self) -> Result<(), Error> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn name(&mut self, what: &str, name: &str) {
        if self.error.is_none() && !is_valid_name(name) {
            self.error = Some(Error::InvalidName {
                what: what.to_owned(),
                name: name.to_owned(),
            });
        }
    }

    fn text(&mut self, what: &str, text: &str) {
        // Most text starts with a visible ASCII character: no need to trim.
        let blank =
            !text.as_bytes().first().is_some_and(u8::is_ascii_graphic) && text.trim().is_empty();
        // Without early exit, the compiler checks many bytes at once.
        let separator = text.bytes().fold(false, |seen, b| {
            seen | (b == b'\n') | (b == b';') | (b == b'#')
        });
        if self.error.is_none() && (blank || separator) {
            self.error = Some(Error::InvalidName {
                what: what.to_owned(),
                name: text.to_owned(),
            });
        }
    }

    /// Appends every operation of another transaction.
    pub fn extend(&mut self, other: Transaction) {
        if self.error.is_none() {
            self.error = other.error;
        }
        self.ops.extend(other.ops);
    }

    /// `add table` (with Portico's comment).
    pub fn add_table(&mut self, family: Family) {
        self.ops.push(Op::AddTable(family));
    }

    /// `delete table`.
    pub fn delete_table(&mut self, family: Family) {
        self.ops.push(Op::DeleteTable(family));
    }

    /// `add chain`, a base chain when `base` is given.
    pub fn add_chain(&mut self, family: Family, name: &str, base: Option<String>) {
        self.name("chain", name);
        self.ops.push(Op::AddChain {
            family,
            name: name.to_owned(),
            base,
        });
    }

    /// `flush chain`.
    pub fn flush_chain(&mut self, family: Family, name: &str) {
        self.name("chain", name);
        self.ops.push(Op::FlushChain {
            family,
            name: name.to_owned(),
        });
    }

    /// `delete chain`.
    pub fn delete_chain(&mut self, family: Family, name: &str) {
        self.name("chain", name);
        self.ops.push(Op::DeleteChain {
            family,
            name: name.to_owned(),
        });
    }

    /// `add rule`.
    pub fn add_rule(&mut self, family: Family, chain: &str, rule: impl Into<String>) {
        let rule = rule.into();
        self.name("chain", chain);
        self.text("rule", &rule);
        self.ops.push(Op::AddRule {
            family,
            chain: chain.to_owned(),
            rule,
        });
    }

    /// `add set` / `add map`.
    pub fn add_set(&mut self, family: Family, name: &str, decl: SetDecl) {
        self.name("set", name);
        self.ops.push(Op::AddSet {
            family,
            name: name.to_owned(),
            decl,
        });
    }

    /// `flush set` / `flush map`.
    pub fn flush_set(&mut self, family: Family, name: &str, kind: SetKind) {
        self.name("set", name);
        self.ops.push(Op::FlushSet {
            family,
            name: name.to_owned(),
            kind,
        });
    }

    /// `delete set` / `delete map`.
    pub fn delete_set(&mut self, family: Family, name: &str, kind: SetKind) {
        self.name("set", name);
        self.ops.push(Op::DeleteSet {
            family,
            name: name.to_owned(),
            kind,
        });
    }

    /// `add element`.
    pub fn add_element(
        &mut self,
        family: Family,
        set: &'static str,
        key: &str,
        value: Option<&str>,
    ) {
        let value: Option<Arc<str>> = value.map(Arc::from);
        self.add_shared_element(family, set, &Arc::from(key), value.as_ref());
    }

    /// `add element` of text that is shared, not copied (a full sync
    /// writes hundreds of thousands of elements).
    pub fn add_shared_element(
        &mut self,
        family: Family,
        set: &'static str,
        key: &Arc<str>,
        value: Option<&Arc<str>>,
    ) {
        self.name("set", set);
        self.text("element key", key);
        if let Some(v) = value {
            self.text("element value", v);
        }
        self.ops.push(Op::AddElement {
            family,
            set,
            key: Arc::clone(key),
            value: value.map(Arc::clone),
        });
    }

    /// `delete element`.
    pub fn delete_element(&mut self, family: Family, set: &'static str, key: &str) {
        self.name("set", set);
        self.text("element key", key);
        self.ops.push(Op::DeleteElement {
            family,
            set,
            key: key.into(),
        });
    }
}

/// The `nft -f` script: one command per line; runs of element operations
/// on one set become one command each thousand elements.
impl fmt::Display for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        while i < self.ops.len() {
            let op = &self.ops[i];
            match op {
                Op::AddElement { family, set, .. } | Op::DeleteElement { family, set, .. } => {
                    let add = matches!(op, Op::AddElement { .. });
                    let verb = if add { "add" } else { "delete" };
                    let mut line = format!("{verb} element {family} {TABLE} {set} {{ ");
                    let mut n = 0;
                    while i < self.ops.len() && n < ELEMENTS_PER_COMMAND {
                        let (k, v) = match &self.ops[i] {
                            Op::AddElement {
                                family: f2,
                                set: s2,
                                key,
                                value,
                            } if add && f2 == family && s2 == set => (key, value.as_ref()),
                            Op::DeleteElement {
                                family: f2,
                                set: s2,
                                key,
                            } if !add && f2 == family && s2 == set => (key, None),
                            _ => break,
                        };
                        if n > 0 {
                            line.push_str(", ");
                        }
                        line.push_str(k);
                        if let Some(v) = v {
                            let _ = write!(line, " : {v}");
                        }
                        n += 1;
                        i += 1;
                    }
                    line.push_str(" }");
                    writeln!(f, "{line}")?;
                    continue;
                }
                Op::AddTable(family) => {
                    writeln!(
                        f,
                        "add table {family} {TABLE} {{ comment \"{TABLE_COMMENT}\" ; }}"
                    )?;
                }
                Op::DeleteTable(family) => writeln!(f, "delete table {family} {TABLE}")?,
                Op::AddChain { family, name, base } => match base {
                    Some(b) => writeln!(f, "add chain {family} {TABLE} {name} {{ {b} }}")?,
                    None => writeln!(f, "add chain {family} {TABLE} {name}")?,
                },
                Op::FlushChain { family, name } => {
                    writeln!(f, "flush chain {family} {TABLE} {name}")?;
                }
                Op::DeleteChain { family, name } => {
                    writeln!(f, "delete chain {family} {TABLE} {name}")?;
                }
                Op::AddRule {
                    family,
                    chain,
                    rule,
                } => writeln!(f, "add rule {family} {TABLE} {chain} {rule}")?,
                Op::AddSet { family, name, decl } => {
                    writeln!(
                        f,
                        "add {} {family} {TABLE} {name} {decl}",
                        decl.kind.keyword()
                    )?;
                }
                Op::FlushSet { family, name, kind } => {
                    writeln!(f, "flush {} {family} {TABLE} {name}", kind.keyword())?;
                }
                Op::DeleteSet { family, name, kind } => {
                    writeln!(f, "delete {} {family} {TABLE} {name}", kind.keyword())?;
                }
            }
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_one_command_per_line_with_elements_batched() {
        let mut tx = Transaction::new();
        tx.add_table(Family::Ipv4);
        tx.add_chain(Family::Ipv4, "services", None);
        tx.flush_chain(Family::Ipv4, "services");
        tx.add_rule(Family::Ipv4, "services", "jump x");
        tx.add_set(
            Family::Ipv6,
            "cluster-ips",
            SetDecl::set("type ipv6_addr").comment("ClusterIPs"),
        );
        tx.add_element(Family::Ipv4, "m", "1.2.3.4 . tcp . 80", Some("goto a"));
        tx.add_element(Family::Ipv4, "m", "1.2.3.5 . tcp . 80", Some("goto b"));
        tx.add_element(Family::Ipv4, "s", "1.2.3.5", None);
        tx.delete_element(Family::Ipv4, "s", "1.2.3.6");
        tx.delete_element(Family::Ipv4, "s", "1.2.3.7");
        tx.delete_set(Family::Ipv4, "s", SetKind::Set);
        assert!(tx.check().is_ok());
        assert_eq!(
            tx.to_string(),
            format!(
                "add table ip portico {{ comment \"{TABLE_COMMENT}\" ; }}\n\
                 add chain ip portico services\n\
                 flush chain ip portico services\n\
                 add rule ip portico services jump x\n\
                 add set ip6 portico cluster-ips {{ type ipv6_addr ; comment \"ClusterIPs\" ; }}\n\
                 add element ip portico m {{ 1.2.3.4 . tcp . 80 : goto a, 1.2.3.5 . tcp . 80 : goto b }}\n\
                 add element ip portico s {{ 1.2.3.5 }}\n\
                 delete element ip portico s {{ 1.2.3.6, 1.2.3.7 }}\n\
                 delete set ip portico s\n"
            )
        );
    }

    #[test]
    fn the_first_error_sticks() {
        let mut tx = Transaction::new();
        tx.add_chain(Family::Ipv4, "ok", None);
        tx.add_chain(Family::Ipv4, "not:ok", None);
        tx.add_rule(Family::Ipv4, "ok", "accept; drop");
        assert_eq!(tx.len(), 3);
        match tx.check() {
            Err(Error::InvalidName { name, .. }) => assert_eq!(name, "not:ok"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn large_element_runs_are_split() {
        let mut tx = Transaction::new();
        for i in 0..2500u32 {
            tx.add_element(Family::Ipv4, "s", &i.to_string(), None);
        }
        assert_eq!(tx.to_string().lines().count(), 3);
    }
}
