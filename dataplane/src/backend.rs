//! Where transactions go: the real `nft` binary, or an in-memory fake
//! that follows nft's rules closely enough to catch ordering mistakes and
//! dumps its state as sorted text for golden tests.

use crate::model::Existing;
use crate::names::{Family, TABLE};
use crate::tx::{Op, SetDecl, SetKind, Transaction};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// Something that applies transactions atomically.
pub trait Backend {
    /// Applies a transaction: all of it, or nothing.
    fn apply(&mut self, tx: &Transaction) -> Result<()>;
    /// The chains and sets of Portico's table in a family (nothing when
    /// the table does not exist).
    fn list(&mut self, family: Family) -> Result<Existing>;
}

// ---- the real thing ---------------------------------------------------------

/// The `nft` binary, optionally run in a named network namespace (through
/// `ip netns exec`, as tests and benchmarks do).
///
/// Small transactions (partial syncs) go to a long-lived `nft -i` session:
/// starting nft costs about 5 ms, and a process that closes its netlink
/// socket after deleting set elements waits for an RCU grace period
/// (10 ms or more), which a session never closes. Large ones (full syncs)
/// and listings run a fresh `nft -f -`. Each line sent to the session is
/// one atomic batch; a failing marker command after it tells where its
/// errors end.
#[derive(Clone, Debug)]
pub struct Nft {
    program: PathBuf,
    netns: Option<String>,
    session: Arc<Mutex<SessionState>>,
}

/// The session, and how often one broke.
#[derive(Debug, Default)]
struct SessionState {
    session: Option<Session>,
    failures: u32,
}

/// After this many broken sessions (an nft built without its interactive
/// mode, say), every transaction runs a fresh `nft -f -`.
const SESSION_MAX_FAILURES: u32 = 3;

/// Transactions up to this size go through the session.
const SESSION_MAX_BYTES: usize = 64 << 10;

/// How long a session may take to answer one transaction.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `nft -i`.
struct Session {
    child: Child,
    stdin: ChildStdin,
    stderr: mpsc::Receiver<String>,
    seq: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session(pid {})", self.child.id())
    }
}

impl Session {
    fn spawn(mut cmd: Command) -> std::io::Result<Session> {
        let mut child = cmd
            .arg("-i")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("nft -i without pipes"));
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Nothing useful is printed on stdout; keep the pipe from filling.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut BufReader::new(stdout), &mut std::io::sink());
        });
        Ok(Session {
            child,
            stdin,
            stderr: rx,
            seq: 0,
        })
    }

    /// Runs a script as one batch; `Ok(Err(..))` is nft's refusal,
    /// `Err(..)` a broken session.
    fn apply(&mut self, script: &str) -> std::io::Result<std::result::Result<(), String>> {
        self.seq += 1;
        let marker = format!("portico-sync-marker n{}", self.seq);
        let line: Vec<&str> = script.lines().collect();
        writeln!(self.stdin, "{}", line.join(" ; "))?;
        writeln!(self.stdin, "list set ip {marker}")?;
        self.stdin.flush()?;
        let mut lines: Vec<String> = Vec::new();
        loop {
            match self.stderr.recv_timeout(SESSION_TIMEOUT) {
                Ok(l) if l.contains(&marker) => break,
                Ok(l) => {
                    // Carets under an echoed command carry nothing.
                    if !l.trim().is_empty() && !l.trim().chars().all(|c| matches!(c, '^' | '~')) {
                        lines.push(l);
                    }
                }
                Err(e) => return Err(std::io::Error::other(format!("nft -i: {e}"))),
            }
        }
        // The marker's own error precedes its echo.
        if lines.last().is_some_and(|l| l.contains("Error:")) {
            lines.pop();
        }
        if lines.iter().any(|l| l.contains("Error:")) {
            Ok(Err(summarize(&lines.join("\n"))))
        } else {
            Ok(Ok(()))
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Default for Nft {
    fn default() -> Self {
        Nft::new()
    }
}

impl Nft {
    /// `nft` from `PATH`, in the current network namespace.
    pub fn new() -> Self {
        Nft {
            program: PathBuf::from("nft"),
            netns: None,
            session: Arc::default(),
        }
    }

    /// `nft` run in the network namespace `/run/netns/<name>`.
    pub fn in_netns(name: &str) -> Self {
        Nft {
            netns: Some(name.to_owned()),
            ..Nft::new()
        }
    }

    /// Another `nft` binary (or a wrapper around one).
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self.session = Arc::default();
        self
    }

    fn command(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        }
    }

    /// Runs nft with arguments and optional standard input; returns its
    /// standard output.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let spawn_error = |e: std::io::Error| Error::Spawn {
            program: self.program.display().to_string(),
            message: e.to_string(),
        };
        let mut child = self
            .command()
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error shows up as nft's own failure below.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_error)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(Error::Nft(summarize(&stderr)))
        }
    }

    /// The installed ruleset in nft syntax (both tables; a missing one is
    /// left out).
    pub fn dump(&self) -> Result<String> {
        let mut out = String::new();
        for family in Family::ALL {
            match self.run(&["list", "table", family.nft(), TABLE], None) {
                Ok(s) => out.push_str(&s),
                Err(Error::Nft(e)) if is_missing(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Removes both tables, whether they exist or not, in one transaction.
    pub fn cleanup(&self) -> Result<()> {
        let mut tx = Transaction::new();
        for family in Family::ALL {
            tx.add_table(family);
            tx.delete_table(family);
        }
        self.run(&["-f", "-"], Some(&tx.to_string())).map(drop)
    }
}

fn is_missing(stderr: &str) -> bool {
    stderr.contains("No such file or directory")
}

/// nft repeats the whole offending command under each error; keep the
/// error lines and the first few of the rest, so logs stay readable.
fn summarize(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Error:"))
        .take(5)
        .collect();
    let mut s = if errors.is_empty() {
        stderr.trim().chars().take(2000).collect()
    } else {
        errors.join("\n")
    };
    let more = stderr.lines().filter(|l| l.contains("Error:")).count();
    if more > 5 {
        let _ = write!(s, "\n… and {} more errors", more - 5);
    }
    s
}

impl Backend for Nft {
    fn apply(&mut self, tx: &Transaction) -> Result<()> {
        tx.check()?;
        if tx.is_empty() {
            return Ok(());
        }
        let script = tx.to_string();
        if script.len() > SESSION_MAX_BYTES {
            return self.run(&["-f", "-"], Some(&script)).map(drop);
        }
        let mut state = self
            .session
            .lock()
            .map_err(|_| Error::Nft("the nft session lock is poisoned".into()))?;
        if state.failures >= SESSION_MAX_FAILURES {
            drop(state);
            return self.run(&["-f", "-"], Some(&script)).map(drop);
        }
        if state.session.is_none() {
            match Session::spawn(self.command()) {
                Ok(s) => state.session = Some(s),
                Err(e) => {
                    state.failures += 1;
                    tracing::warn!(error = %e, "cannot start nft -i; running nft -f - instead");
                    drop(state);
                    return self.run(&["-f", "-"], Some(&script)).map(drop);
                }
            }
        }
        let result = match state.session.as_mut() {
            Some(session) => session.apply(&script),
            None => Err(std::io::Error::other("no session")),
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Nft(e)),
            Err(e) => {
                // A broken session is dropped (and killed); this
                // transaction runs in a fresh nft (if the session applied
                // it after all, that one fails and the next sync is full).
                state.session = None;
                state.failures += 1;
                tracing::warn!(error = %e, "the nft -i session broke; running nft -f - instead");
                drop(state);
                self.run(&["-f", "-"], Some(&script)).map(drop)
            }
        }
    }

    fn list(&mut self, family: Family) -> Result<Existing> {
        // Names only: `list table` would fetch every element too.
        let f = family.nft();
        // Every table of the family is listed; the parser keeps Portico's.
        // One nft for the three listings (each one costs a process).
        let cmds = format!("list chains {f} ; list sets {f} ; list maps {f}");
        parse_listing(&self.run(&["-t", "-j", &cmds], None)?)
    }
}

/// Chain and set names from `nft -j list …` (one JSON document per list
/// command).
pub fn parse_listing(json: &str) -> Result<Existing> {
    let mut items = Vec::new();
    for v in serde_json::Deserializer::from_str(json).into_iter::<serde_json::Value>() {
        let mut v = v.map_err(|e| Error::Parse(e.to_string()))?;
        match v.get_mut("nftables").map(serde_json::Value::take) {
            Some(serde_json::Value::Array(a)) => items.extend(a),
            _ => return Err(Error::Parse("no \"nftables\" array".into())),
        }
    }
    if items.is_empty() {
        return Err(Error::Parse("no \"nftables\" array".into()));
    }
    let mut ex = Existing::default();
    for item in &items {
        let name = |kind: &str| {
            item.get(kind)
                .filter(|o| o.get("table").and_then(|t| t.as_str()) == Some(TABLE))
                .and_then(|o| o.get("name"))
                .and_then(|n| n.as_str())
                .map(str::to_owned)
        };
        if let Some(n) = name("chain") {
            let chain = &item["chain"];
            if let (Some(t), Some(h), Some(p)) = (
                chain.get("type").and_then(|v| v.as_str()),
                chain.get("hook").and_then(|v| v.as_str()),
                chain.get("prio").and_then(serde_json::Value::as_i64),
            ) {
                ex.hooks.insert(n.clone(), format!("{t} {h} {p}"));
            }
            ex.chains.insert(n);
        }
        for (key, kind) in [("set", SetKind::Set), ("map", SetKind::Map)] {
            if let Some(n) = name(key) {
                let size = item[key].get("size").and_then(serde_json::Value::as_u64);
                if let Some(size) = size.and_then(|s| u32::try_from(s).ok()) {
                    ex.sizes.insert(n.clone(), size);
                }
                ex.sets.insert(n, kind);
            }
        }
    }
    Ok(ex)
}

// ---- the fake ---------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FakeChain {
    base: Option<String>,
    rules: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FakeSet {
    decl: SetDecl,
    elements: BTreeMap<String, Option<String>>,
    /// A size declared again in the transaction: it holds from the commit
    /// on (until then, the old size limits the elements).
    next_size: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FakeTable {
    chains: BTreeMap<String, FakeChain>,
    sets: BTreeMap<String, FakeSet>,
}

/// An in-memory nft: applies transactions atomically with nft's rules
/// (objects must exist before use, a chain must be empty and unreferenced
/// to be deleted, an element's key must not exist with another value) and
/// dumps its state as sorted text.
#[derive(Clone, Debug, Default)]
pub struct FakeNft {
    tables: BTreeMap<Family, FakeTable>,
    last: Option<Transaction>,
    applied: usize,
    fail_next: Option<String>,
}

impl FakeNft {
    /// An empty fake.
    pub fn new() -> Self {
        FakeNft::default()
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
        tables: &mut BTreeMap<Family, FakeTable>,
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
                            FakeChain {
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
                            FakeSet {
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
    tables: &mut BTreeMap<Family, FakeTable>,
    family: Family,
) -> std::result::Result<&mut FakeTable, String> {
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
fn check_references(t: &FakeTable, text: &str) -> std::result::Result<(), String> {
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
fn chain_users<'a>(t: &'a FakeTable, name: &'a str) -> impl Iterator<Item = String> + 'a {
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

impl Backend for FakeNft {
    fn apply(&mut self, tx: &Transaction) -> Result<()> {
        self.last = Some(tx.clone());
        tx.check()?;
        if let Some(message) = self.fail_next.take() {
            return Err(Error::Fake(message));
        }
        let mut next = self.tables.clone();
        for op in tx.ops() {
            FakeNft::apply_op(&mut next, op).map_err(Error::Fake)?;
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
    fn the_listing_of_a_table_gives_chain_and_set_names() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "portico", "handle": 1}},
            {"chain": {"family": "ip", "table": "portico", "name": "services", "handle": 2}},
            {"chain": {"family": "ip", "table": "portico", "name": "nat-output", "handle": 3, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}}]}
            {"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "ip", "name": "affinity-X-a/b/tcp/80__10.0.0.1/80", "table": "portico", "type": "ipv4_addr"}},
            {"map": {"family": "ip", "name": "service-ips", "table": "portico", "type": "ipv4_addr", "map": "verdict", "size": 65536}},
            {"rule": {"family": "ip", "table": "portico", "chain": "services", "handle": 4, "expr": []}}]}"#;
        let ex = parse_listing(json).unwrap();
        assert_eq!(
            ex.chains.into_iter().collect::<Vec<_>>(),
            vec!["nat-output", "services"]
        );
        assert_eq!(
            ex.hooks.get("nat-output").map(String::as_str),
            Some("nat output -100")
        );
        assert_eq!(
            crate::names::hook_key(&crate::names::BASE_CHAINS[5].spec()).as_deref(),
            Some("nat output -100")
        );
        assert_eq!(
            ex.sets.into_iter().collect::<Vec<_>>(),
            vec![
                (
                    "affinity-X-a/b/tcp/80__10.0.0.1/80".to_owned(),
                    SetKind::Set
                ),
                ("service-ips".to_owned(), SetKind::Map)
            ]
        );
        assert_eq!(
            ex.sizes.into_iter().collect::<Vec<_>>(),
            vec![("service-ips".to_owned(), 65536)]
        );
        assert!(parse_listing("nonsense").is_err());
    }

    #[test]
    fn the_fake_refuses_what_nft_refuses_and_changes_nothing() {
        let mut nft = FakeNft::new();
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
