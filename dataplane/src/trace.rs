//! A packet tracer over the rule shapes Portico emits, run against the
//! in-memory backend: where does the first packet of a connection go?
//!
//! ```text
//!  remote packet: filter-prerouting ─> nat-prerouting ─> filter-forward ─> nat-postrouting
//!  node packet:   filter-output ─> nat-output ─> filter-output-post-dnat ─> nat-postrouting
//! ```
//!
//! It knows exactly the rules the renderer writes (an unknown rule is an
//! error, so a new shape cannot slip past the table tests) and follows
//! verdict maps, pick chains with their `numgen` draws, affinity sets
//! (which it updates, like the kernel), the masquerade mark and hairpin.

use crate::backend::MemoryNft;
use crate::names::{BASE_CHAINS, Family, Hook};
use ipnet::IpNet;
use portico_catalog::Protocol;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Where a packet comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Arrives on an interface (a client, a pod).
    Remote,
    /// Sent by the node itself.
    Node,
}

/// The first packet of a connection.
#[derive(Clone, Debug)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Where it comes from.
    pub origin: Origin,
    /// The node's own addresses (`fib … type local`).
    pub local: Vec<IpAddr>,
}

/// What becomes of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// DNATed to an endpoint, and masqueraded or not.
    Dnat {
        /// The endpoint.
        to: SocketAddr,
        /// SNATed to the node.
        masquerade: bool,
    },
    /// Refused (TCP reset or ICMP unreachable).
    Reject,
    /// Dropped silently.
    Drop,
    /// Not a Service: passes untouched.
    Pass,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Dnat { to, masquerade } => {
                write!(f, "{to}")?;
                if *masquerade {
                    f.write_str(" masq")?;
                }
                Ok(())
            }
            Outcome::Reject => f.write_str("REJECT"),
            Outcome::Drop => f.write_str("DROP"),
            Outcome::Pass => f.write_str("PASS"),
        }
    }
}

/// A rule a packet met that did something: matched and jumped, went,
/// set a mark, ended the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The chain the rule is in.
    pub chain: String,
    /// The rule, as the renderer writes it.
    pub rule: String,
}

/// How a chain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// Fell off the end, or `return`.
    Continue,
    /// Accepted (a DNAT is an accept of the nat chain).
    Accept,
    /// Dropped.
    Drop,
    /// Rejected.
    Reject,
}

/// The tracer. `draw(n)` returns what `numgen random mod n` yields.
pub struct Tracer<'a, D: FnMut(usize) -> usize> {
    nft: &'a MemoryNft,
    draw: D,
    affinity: HashMap<String, HashSet<IpAddr>>,
}

struct State {
    path: Vec<Hit>,
    family: Family,
    src: IpAddr,
    dst: SocketAddr,
    protocol: Protocol,
    origin: Origin,
    local: Vec<IpAddr>,
    mark: bool,
    dnat: bool,
    masquerade: bool,
}

impl State {
    fn proto(&self) -> &'static str {
        crate::names::proto(self.protocol)
    }
}

fn nets(text: &str) -> Result<Vec<IpNet>, String> {
    text.trim_matches(|c| c == '{' || c == '}' || c == ' ')
        .split(',')
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("not an address or CIDR: {s:?}"))
        })
        .collect()
}

/// `10.1.2.3:80` or `[fd00::1]:80`.
fn endpoint(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .map_err(|_| format!("not an endpoint: {text:?}"))
}

impl<'a, D: FnMut(usize) -> usize> Tracer<'a, D> {
    /// A tracer over the fake's ruleset.
    pub fn new(nft: &'a MemoryNft, draw: D) -> Self {
        Tracer {
            nft,
            draw,
            affinity: HashMap::new(),
        }
    }

    /// Traces one packet through the hooks it meets.
    pub fn trace(&mut self, p: &Packet) -> Result<Outcome, String> {
        self.trace_path(p).map(|(outcome, _)| outcome)
    }

    /// The same, with the rules the packet met, in order.
    pub fn trace_path(&mut self, p: &Packet) -> Result<(Outcome, Vec<Hit>), String> {
        let family = Family::of(&p.dst.ip());
        let mut s = State {
            path: Vec::new(),
            family,
            src: p.src,
            dst: p.dst,
            protocol: p.protocol,
            origin: p.origin,
            local: p.local.clone(),
            mark: false,
            dnat: false,
            masquerade: false,
        };
        let stages: &[(Hook, i32)] = match p.origin {
            Origin::Remote => &[
                (Hook::Prerouting, -110),
                (Hook::Prerouting, -100),
                (Hook::Forward, -110),
                (Hook::Postrouting, 100),
            ],
            Origin::Node => &[
                (Hook::Output, -110),
                (Hook::Output, -100),
                (Hook::Output, -90),
                (Hook::Postrouting, 100),
            ],
        };
        for &(hook, priority) in stages {
            let Some(base) = BASE_CHAINS
                .iter()
                .find(|b| b.hook == hook && b.priority == priority)
            else {
                continue;
            };
            if hook == Hook::Forward && !s.dnat && s.local.contains(&s.dst.ip()) {
                continue; // delivered to the node itself: no forward hook
            }
            match self.chain(&mut s, base.name, 0)? {
                End::Drop => return Ok((Outcome::Drop, s.path)),
                End::Reject => return Ok((Outcome::Reject, s.path)),
                End::Accept | End::Continue => {}
            }
        }
        let outcome = if s.dnat {
            Outcome::Dnat {
                to: s.dst,
                masquerade: s.masquerade,
            }
        } else {
            Outcome::Pass
        };
        Ok((outcome, s.path))
    }

    fn chain(&mut self, s: &mut State, name: &str, depth: usize) -> Result<End, String> {
        if depth > 16 {
            return Err(format!("chain {name}: jumps too deep"));
        }
        let rules = self
            .nft
            .rules(s.family, name)
            .ok_or_else(|| format!("no chain {name}"))?
            .to_vec();
        for rule in &rules {
            let step = self.rule(s, rule, depth)?;
            if !matches!(step, Step::Next)
                || rule.starts_with("meta mark set")
                || rule.starts_with("update @")
            {
                s.path.push(Hit {
                    chain: name.to_owned(),
                    rule: rule.clone(),
                });
            }
            match step {
                Step::Next => {}
                Step::Return => return Ok(End::Continue),
                Step::End(e) => return Ok(e),
                Step::Jump(target) => match self.chain(s, &target, depth + 1)? {
                    End::Continue => {}
                    other => return Ok(other),
                },
                Step::Goto(target) => return self.chain(s, &target, depth + 1),
            }
        }
        Ok(End::Continue)
    }

    fn set(&self, s: &State, set: &str) -> Result<Vec<(&'a str, Option<&'a str>)>, String> {
        let els = self
            .nft
            .elements(s.family, set)
            .ok_or_else(|| format!("no set {set}"))?;
        Ok(els
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect())
    }

    fn lookup(&self, s: &State, map: &str, key: &str) -> Result<Option<&'a str>, String> {
        Ok(self
            .nft
            .elements(s.family, map)
            .ok_or_else(|| format!("no map {map}"))?
            .get(key)
            .and_then(|v| v.as_deref()))
    }

    fn verdict(&self, v: &str) -> Result<Step, String> {
        match v.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["goto", t] => Ok(Step::Goto((*t).to_owned())),
            ["jump", t] => Ok(Step::Jump((*t).to_owned())),
            ["drop"] => Ok(Step::End(End::Drop)),
            ["accept"] => Ok(Step::End(End::Accept)),
            _ => Err(format!("unknown verdict {v:?}")),
        }
    }

    fn rule(&mut self, s: &mut State, rule: &str, _depth: usize) -> Result<Step, String> {
        let f = s.family.nft();
        let daddr = format!("{f} daddr");
        let saddr = format!("{f} saddr");
        let mut r = rule;
        // Conditions that only ever hold for the first packet.
        for always in ["ct state new "] {
            if let Some(rest) = r.strip_prefix(always) {
                r = rest;
            }
        }
        if let Some(rest) = r.strip_prefix("ct status dnat ") {
            if !s.dnat {
                return Ok(Step::Next);
            }
            r = rest;
        }
        if let Some(t) = r.strip_prefix("jump ") {
            return Ok(Step::Jump(t.to_owned()));
        }
        if let Some(t) = r.strip_prefix("goto ") {
            return Ok(Step::Goto(t.to_owned()));
        }
        let key3 = format!("{} . {} . {}", s.dst.ip(), s.proto(), s.dst.port());
        let key2 = format!("{} . {}", s.proto(), s.dst.port());
        let fib_local_dst = s.local.contains(&s.dst.ip());
        let fib_local_src = s.origin == Origin::Node || s.local.contains(&s.src);

        if let Some(rest) = r.strip_prefix(&format!("{daddr} . meta l4proto . th dport vmap @")) {
            return match self.lookup(s, rest, &key3)? {
                Some(v) => self.verdict(v),
                None => Ok(Step::Next),
            };
        }
        if let Some(rest) = r.strip_prefix(&format!(
            "{daddr} @nodeport-ips fib daddr type local meta l4proto . th dport vmap @"
        )) {
            let in_set = self
                .set(s, "nodeport-ips")?
                .iter()
                .any(|(k, _)| nets(k).is_ok_and(|n| n.iter().any(|n| n.contains(&s.dst.ip()))));
            if !in_set || !fib_local_dst {
                return Ok(Step::Next);
            }
            return match self.lookup(s, rest, &key2)? {
                Some(v) => self.verdict(v),
                None => Ok(Step::Next),
            };
        }
        if let Some(rest) = r.strip_prefix(&format!("{daddr} @cluster-ips")) {
            let member = self.lookup_set(s, "cluster-ips", &s.dst.ip().to_string())?;
            if !member {
                return Ok(Step::Next);
            }
            let rest = rest.trim();
            if rest == "reject" {
                return Ok(Step::End(End::Reject));
            }
            let (cond, action) = match rest.strip_prefix(&format!("{saddr} != ")) {
                Some(x) => {
                    let (n, a) = x
                        .rsplit_once(" jump ")
                        .ok_or_else(|| format!("unknown rule {rule:?}"))?;
                    (Some(nets(n)?), a)
                }
                None => (
                    None,
                    rest.strip_prefix("jump ")
                        .ok_or_else(|| format!("unknown rule {rule:?}"))?,
                ),
            };
            if cond.is_some_and(|n| n.iter().any(|n| n.contains(&s.src))) {
                return Ok(Step::Next);
            }
            return Ok(Step::Jump(action.to_owned()));
        }
        if r.starts_with(&format!("{daddr} . meta l4proto . th dport @firewall-ips ")) {
            let protected = self.lookup_set(s, "firewall-ips", &key3)?;
            if !protected {
                return Ok(Step::Next);
            }
            let allowed = self.set(s, "firewall-allow")?.iter().any(|(k, _)| {
                k.rsplit_once(" . ").is_some_and(|(head, range)| {
                    head == key3 && nets(range).is_ok_and(|n| n.iter().any(|n| n.contains(&s.src)))
                })
            });
            return Ok(if allowed {
                Step::Next
            } else {
                Step::End(End::Drop)
            });
        }
        if let Some(rest) = r.strip_prefix(&format!("{daddr} ")) {
            // `ip daddr <nets> drop`
            if let Some(n) = rest.strip_suffix(" drop") {
                return Ok(if nets(n)?.iter().any(|n| n.contains(&s.dst.ip())) {
                    Step::End(End::Drop)
                } else {
                    Step::Next
                });
            }
        }
        if let Some(rest) = r.strip_prefix(&format!("{saddr} . {daddr} @")) {
            // hairpin: `… @hairpin jump mark-for-masquerade`
            let (set, action) = rest
                .split_once(" jump ")
                .ok_or_else(|| format!("unknown rule {rule:?}"))?;
            let key = format!("{} . {}", s.src, s.dst.ip());
            return Ok(if self.lookup_set(s, set, &key)? {
                Step::Jump(action.to_owned())
            } else {
                Step::Next
            });
        }
        if let Some(rest) = r.strip_prefix(&format!("{saddr} @")) {
            // affinity: `ip saddr @affinity-… goto endpoint-…`
            let (set, target) = rest
                .split_once(" goto ")
                .ok_or_else(|| format!("unknown rule {rule:?}"))?;
            let member = self.affinity.get(set).is_some_and(|c| c.contains(&s.src));
            return Ok(if member {
                Step::Goto(target.to_owned())
            } else {
                Step::Next
            });
        }
        if let Some(rest) = r.strip_prefix(&format!("{saddr} ")) {
            // `ip saddr <nets> goto X`
            let (n, target) = rest
                .rsplit_once(" goto ")
                .ok_or_else(|| format!("unknown rule {rule:?}"))?;
            return Ok(if nets(n)?.iter().any(|n| n.contains(&s.src)) {
                Step::Goto(target.to_owned())
            } else {
                Step::Next
            });
        }
        if let Some(rest) = r.strip_prefix("fib saddr type local ") {
            if !fib_local_src {
                return Ok(Step::Next);
            }
            return self.verdict(rest);
        }
        if let Some(rest) = r.strip_prefix("update @") {
            let set = rest.split_once(' ').map_or(rest, |(set, _)| set).to_owned();
            self.affinity.entry(set).or_default().insert(s.src);
            return Ok(Step::Next);
        }
        if let Some(rest) = r.strip_prefix("numgen random mod ") {
            // `numgen random mod N vmap { 0 : goto a, 1 : goto b }`
            let (n, arms) = rest
                .split_once(" vmap ")
                .ok_or_else(|| format!("unknown rule {rule:?}"))?;
            let n: usize = n.parse().map_err(|_| format!("bad modulus in {rule:?}"))?;
            let pick = (self.draw)(n) % n;
            let arm = arms
                .trim_matches(|c| c == '{' || c == '}' || c == ' ')
                .split(", ")
                .find_map(|a| a.strip_prefix(&format!("{pick} : ")))
                .ok_or_else(|| format!("no arm {pick} in {rule:?}"))?;
            return self.verdict(arm);
        }
        if let Some(rest) = r.strip_prefix("meta l4proto ") {
            let (p, rest) = rest
                .split_once(' ')
                .ok_or_else(|| format!("unknown rule {rule:?}"))?;
            if p != s.proto() {
                return Ok(Step::Next);
            }
            if rest == "reject with tcp reset" {
                return Ok(Step::End(End::Reject));
            }
            if rest == ". th dport vmap @service-nodeports" {
                return Err(format!("unknown rule {rule:?}"));
            }
            let to = rest
                .strip_prefix(&format!("dnat {f} to "))
                .ok_or_else(|| format!("unknown rule {rule:?}"))?;
            let target = if let Some((pick, ports)) = to.split_once(" : ") {
                // A pick: `[daddr . ]P dport . numgen random mod N [offset O]
                // map @backends : [daddr . ]P dport map @ports`.
                let (key, map) = pick
                    .split_once(" map @")
                    .ok_or_else(|| format!("unknown rule {rule:?}"))?;
                let (port_key, ports) = ports
                    .split_once(" map @")
                    .ok_or_else(|| format!("unknown rule {rule:?}"))?;
                let (fields, numgen) = key
                    .split_once(" . numgen random mod ")
                    .ok_or_else(|| format!("unknown rule {rule:?}"))?;
                let (n, offset) = match numgen.split_once(" offset ") {
                    Some((n, o)) => (n, o.parse::<usize>().map_err(|e| e.to_string())?),
                    None => (numgen, 0),
                };
                let n: usize = n.parse().map_err(|_| format!("bad modulus in {rule:?}"))?;
                let slot = (self.draw)(n) % n + offset;
                let entry = if fields.starts_with(&daddr) {
                    format!("{} . {}", s.dst.ip(), s.dst.port())
                } else {
                    s.dst.port().to_string()
                };
                if port_key != fields {
                    return Err(format!("unknown rule {rule:?}"));
                }
                let addr = match self.lookup(s, map, &format!("{entry} . {slot}"))? {
                    Some(v) => v
                        .parse::<IpAddr>()
                        .map_err(|_| format!("not an address: {v:?}"))?,
                    None => return Ok(Step::Next),
                };
                // nft fails the rule when either lookup finds nothing.
                let port = match self.lookup(s, ports, &entry)? {
                    Some(v) => v.parse::<u16>().map_err(|_| format!("bad port {v:?}"))?,
                    None => return Ok(Step::Next),
                };
                SocketAddr::new(addr, port)
            } else {
                endpoint(to)?
            };
            s.dst = target;
            s.dnat = true;
            return Ok(Step::End(End::Accept));
        }
        match r {
            "reject" => Ok(Step::End(End::Reject)),
            "drop" => Ok(Step::End(End::Drop)),
            "masquerade fully-random" => {
                s.masquerade = true;
                Ok(Step::End(End::Accept))
            }
            _ if r.starts_with("meta mark set meta mark | ") => {
                s.mark = true;
                Ok(Step::Next)
            }
            _ if r.starts_with("meta mark set meta mark ^ ") => {
                s.mark = !s.mark;
                Ok(Step::Next)
            }
            _ if r.starts_with("meta mark & ") && r.ends_with(" return") => {
                Ok(if s.mark { Step::Next } else { Step::Return })
            }
            _ => Err(format!("the tracer does not know the rule {rule:?}")),
        }
    }

    fn lookup_set(&self, s: &State, set: &str, key: &str) -> Result<bool, String> {
        Ok(self
            .nft
            .elements(s.family, set)
            .ok_or_else(|| format!("no set {set}"))?
            .contains_key(key))
    }
}

/// Every way the first packet of `p` can go: one trace per combination of
/// the random draws it meets (`numgen`), at most `limit` of them; each
/// outcome with the rules met.
pub fn every_outcome(
    nft: &MemoryNft,
    p: &Packet,
    limit: usize,
) -> Result<Vec<(Outcome, Vec<Hit>)>, String> {
    let mut out = Vec::new();
    // The draws of the next trace; draws past its end are 0.
    let mut choices: Vec<usize> = Vec::new();
    while out.len() < limit {
        let moduli = std::cell::RefCell::new(Vec::new());
        let traced = {
            let mut tracer = Tracer::new(nft, |n| {
                let mut m = moduli.borrow_mut();
                let pick = choices.get(m.len()).copied().unwrap_or(0);
                m.push(n);
                pick
            });
            tracer.trace_path(p)?
        };
        out.push(traced);
        // The next combination, as an odometer over the moduli met.
        let moduli = moduli.into_inner();
        choices.resize(moduli.len(), 0);
        let Some(i) = (0..moduli.len())
            .rev()
            .find(|&i| choices[i] + 1 < moduli[i])
        else {
            break;
        };
        choices[i] += 1;
        choices.truncate(i + 1);
    }
    Ok(out)
}

enum Step {
    Next,
    Return,
    End(End),
    Jump(String),
    Goto(String),
}
