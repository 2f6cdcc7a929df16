//! The `nft` binary.

use super::Backend;
use super::script::Script;
use super::session::{SESSION_MAX_BYTES, SESSION_MAX_FAILURES, Session, SessionState};
use crate::model::Existing;
use crate::names::{Family, TABLE};
use crate::tx::{SetKind, Transaction};
use crate::{Error, Result};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// The `nft` binary, optionally run in a named network namespace (through
/// `ip netns exec`, as tests and benchmarks do).
///
/// Small transactions (partial syncs) go to a long-lived `nft -i` session:
/// starting nft costs about 5 ms, and a process that closes its netlink
/// socket after deleting set elements waits for an RCU grace period
/// (10 ms or more), which a session never closes. Large ones (full syncs)
/// and listings run a fresh `nft -f -`. Either way nft gets the whole
/// script or nothing (`script.rs`, `session.rs`).
#[derive(Clone, Debug)]
pub struct Nft {
    program: PathBuf,
    netns: Option<String>,
    session: Arc<Mutex<SessionState>>,
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

    /// The network namespace it runs in (`None`: this process's).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
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
        // The whole script first, then nft (see `script.rs`).
        let stdin = match stdin {
            Some(text) => Script::new(text).map_err(spawn_error)?.into_stdin(),
            None => Stdio::null(),
        };
        let out = self
            .command()
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(spawn_error)?;
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
        super::Kernel::Nft(self.clone()).cleanup()
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
            Ok(Err(e)) => Err(Error::Nft(summarize(&e))),
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
}
