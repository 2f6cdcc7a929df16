//! nf_tables over netlink, without the `nft` program.
//!
//! ```text
//!  Transaction ──encode──> BATCH_BEGIN · messages (one per op; elements grouped) · BATCH_END
//!       │                         └── one sendmsg on a NETLINK_NETFILTER socket that stays open
//!       └── errors: NLMSG_ERROR per failing message (its seq names the op), the batch aborted
//!  list: GETCHAIN / GETSET dumps of Portico's table
//! ```
//!
//! The messages are nft 1.0.6's, byte for byte (`encode`, `rule`;
//! `dataplane/tests/netlink.rs` compares them), but for the elements of
//! interval sets, which are written once, as ranges.

pub mod encode;
mod read;
pub mod rule;
pub mod wire;

use super::Backend;
use crate::model::Existing;
use crate::names::{Family, TABLE, hook_key};
use crate::render::Config;
use crate::tx::{Op, SetKind, Transaction};
use crate::{Error, Result};
use encode::{Encoder, SetShape};
use netlink_sys::{Socket, SocketAddr};
use std::collections::{BTreeMap, HashMap};
use wire::{Message, SUBSYS_NFTABLES, attr, msg};

/// The kernel's nf_tables, over a netlink socket of the network namespace
/// it was opened in.
pub struct Netlink {
    socket: Socket,
    /// The declarations of the static sets (Portico adds elements to no
    /// other), whether they were made by this socket or found.
    shapes: HashMap<(Family, String), SetShape>,
    seq: u32,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("seq", &self.seq).finish()
    }
}

/// The largest batch the socket may send and the answers it may hold.
const BUFFER: usize = 256 << 20;

fn io(what: &str, e: std::io::Error) -> Error {
    Error::Nft(format!("netlink: {what}: {e}"))
}

impl Netlink {
    /// A socket in the current network namespace (needs CAP_NET_ADMIN
    /// there to change anything).
    pub fn new() -> Result<Netlink> {
        let mut socket = Socket::new(wire::NETLINK_NETFILTER).map_err(|e| io("socket", e))?;
        socket.bind_auto().map_err(|e| io("bind", e))?;
        socket
            .set_ext_ack(true)
            .map_err(|e| io("extended acks", e))?;
        // Room for a whole full sync, as nft makes (the forced sizes need
        // CAP_NET_ADMIN; without it the defaults stay).
        use nix::sys::socket::{setsockopt, sockopt};
        let _ = setsockopt(&socket, sockopt::SndBufForce, &BUFFER);
        let _ = setsockopt(&socket, sockopt::RcvBufForce, &(BUFFER / 8));
        let mut shapes = HashMap::new();
        for family in Family::ALL {
            for (name, decl) in crate::render::render_static(&Config::default(), family).sets {
                if let Ok(shape) = SetShape::parse(&decl) {
                    shapes.insert((family, name.to_owned()), shape);
                }
            }
        }
        Ok(Netlink {
            socket,
            shapes,
            seq: 0,
        })
    }

    fn send(&self, buf: &[u8]) -> Result<()> {
        // A batch goes in one message: the send buffer must hold it whole
        // (nft does the same).
        if buf.len() > BUFFER {
            use nix::sys::socket::{setsockopt, sockopt};
            let _ = setsockopt(&self.socket, sockopt::SndBufForce, &(buf.len() + (1 << 20)));
        }
        let sent = self.socket.send(buf, 0).map_err(|e| io("send", e))?;
        if sent != buf.len() {
            return Err(Error::Nft(format!(
                "netlink: sent {sent} bytes of {}",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Every message the kernel has queued for this socket, without
    /// waiting (the kernel answers a batch while it is sent).
    fn drain(&self) -> Result<Vec<Vec<u8>>> {
        self.socket
            .set_non_blocking(true)
            .map_err(|e| io("non-blocking", e))?;
        let mut out = Vec::new();
        loop {
            let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
            match self.socket.recv(&mut buf, 0) {
                Ok(0) => break,
                Ok(_) => out.push(buf),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    let _ = self.socket.set_non_blocking(false);
                    return Err(io("receive", e));
                }
            }
        }
        self.socket
            .set_non_blocking(false)
            .map_err(|e| io("blocking", e))?;
        Ok(out)
    }

    /// A dump request's answers: every message until `NLMSG_DONE`.
    fn dump(&mut self, type_: u16, family: Family) -> Result<Vec<Vec<u8>>> {
        self.dump_of(type_, family, &|_| {})
    }

    /// The same, with attributes that narrow it (the table, the set).
    fn dump_of(
        &mut self,
        type_: u16,
        family: Family,
        narrow: &dyn Fn(&mut Message<'_>),
    ) -> Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let mut buf = Vec::new();
        {
            let mut m = Message::start(
                &mut buf,
                (SUBSYS_NFTABLES << 8) | type_,
                wire::F_REQUEST | wire::F_DUMP,
                self.seq,
                nfproto(family),
                0,
            );
            narrow(&mut m);
        }
        self.socket
            .send_to(&buf, &SocketAddr::new(0, 0), 0)
            .map_err(|e| io("dump", e))?;
        let mut out = Vec::new();
        loop {
            let mut rx: Vec<u8> = Vec::with_capacity(1 << 20);
            self.socket
                .recv(&mut rx, 0)
                .map_err(|e| io("dump answer", e))?;
            let messages = wire::messages(&rx).map_err(|e| Error::Nft(format!("netlink: {e}")))?;
            for m in messages {
                match m.type_ {
                    wire::NLMSG_DONE => return Ok(out),
                    wire::NLMSG_ERROR => {
                        let ack = wire::error_ack(&m).unwrap_or(wire::ErrorAck {
                            error: -1,
                            message: None,
                            offset: None,
                        });
                        if ack.error != 0 {
                            return Err(Error::Nft(format!(
                                "netlink: dump: {}",
                                std::io::Error::from_raw_os_error(-ack.error)
                            )));
                        }
                    }
                    _ => out.push(m.payload.to_vec()),
                }
            }
        }
    }
}

impl Netlink {
    /// What the kernel holds in Portico's tables: every chain with its
    /// rules (turned back into the renderer's text), every named set with
    /// its elements.
    pub fn read(&mut self) -> Result<crate::RulesView> {
        let mut tables = BTreeMap::new();
        for family in Family::ALL {
            if let Some(t) = self.read_table(family)? {
                tables.insert(family, t);
            }
        }
        Ok(crate::RulesView {
            tables: tables
                .into_iter()
                .map(|(f, t)| (f.nft().to_owned(), t))
                .collect(),
        })
    }

    fn read_table(&mut self, family: Family) -> Result<Option<crate::backend::TableView>> {
        let bad = |e: String| Error::Nft(format!("netlink: reading {family} {TABLE}: {e}"));
        let tables = self.dump(msg::GETTABLE, family)?;
        let exists = tables.iter().any(|p| {
            let a = wire::attrs(p.get(4..).unwrap_or_default());
            wire::find(&a, attr::TABLE_NAME).map(wire::text).as_deref() == Some(TABLE)
        });
        if !exists {
            return Ok(None);
        }
        // Sets first: a rule's anonymous map is read with them.
        let mut sets = BTreeMap::new();
        let mut anonymous: BTreeMap<String, Vec<(u32, String)>> = BTreeMap::new();
        for set in self
            .dump(msg::GETSET, family)?
            .iter()
            .filter_map(|p| set_info(p))
        {
            let layout = read::Layout::of(set.key_type, set.key_len, set.data, set.flags);
            let elems = self.read_elements(family, &set.name)?;
            let listed = read::elements(&layout, &elems);
            if set.anonymous() {
                let mut arms: Vec<(u32, String)> = listed
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v?)))
                    .collect();
                arms.sort();
                anonymous.insert(set.name, arms);
                continue;
            }
            let map = set.map();
            sets.insert(
                set.name,
                crate::backend::SetView {
                    map,
                    elements: listed,
                },
            );
        }
        let mut chains: BTreeMap<String, crate::backend::ChainView> = BTreeMap::new();
        for chain in self
            .dump(msg::GETCHAIN, family)?
            .iter()
            .filter_map(|p| chain_info(p))
        {
            chains.insert(
                chain.name,
                crate::backend::ChainView {
                    base: chain.base,
                    rules: Vec::new(),
                },
            );
        }
        let rules = self.dump_of(msg::GETRULE, family, &|m| {
            m.str(attr::RULE_TABLE, TABLE);
        })?;
        for payload in rules {
            let a = wire::attrs(payload.get(4..).unwrap_or_default());
            let Some(chain) = wire::find(&a, attr::RULE_CHAIN).map(wire::text) else {
                continue;
            };
            let exprs: Vec<read::Expr> = wire::find(&a, attr::RULE_EXPRESSIONS)
                .map(wire::attrs)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(_, e)| read::Expr::parse(e))
                .collect();
            let text = read::Decoder::new(family, &exprs, &anonymous)
                .text()
                .map_err(|e| bad(format!("a rule of {chain}: {e}")))?;
            chains.entry(chain).or_default().rules.push(text);
        }
        Ok(Some(crate::backend::TableView { chains, sets }))
    }

    fn read_elements(&mut self, family: Family, set: &str) -> Result<Vec<read::Element>> {
        let set = set.to_owned();
        let answers = self.dump_of(msg::GETSETELEM, family, &|m| {
            m.str(attr::SET_ELEM_LIST_TABLE, TABLE)
                .str(attr::SET_ELEM_LIST_SET, &set);
        })?;
        let mut out = Vec::new();
        for payload in answers {
            let a = wire::attrs(payload.get(4..).unwrap_or_default());
            let Some(list) = wire::find(&a, attr::SET_ELEM_LIST_ELEMENTS) else {
                continue;
            };
            for (_, e) in wire::attrs(list) {
                let x = wire::attrs(e);
                let value = |t: u16| {
                    wire::find(&x, t)
                        .map(wire::attrs)
                        .and_then(|v| wire::find(&v, attr::DATA_VALUE).map(<[u8]>::to_vec))
                };
                let Some(key) = value(attr::SET_ELEM_KEY) else {
                    continue;
                };
                out.push(read::Element {
                    key,
                    key_end: value(attr::SET_ELEM_KEY_END),
                    data: wire::find(&x, attr::SET_ELEM_DATA).map(<[u8]>::to_vec),
                    end: wire::find(&x, attr::SET_ELEM_FLAGS)
                        .and_then(wire::be32)
                        .is_some_and(|f| f & 1 != 0),
                });
            }
        }
        Ok(out)
    }
}

/// A chain of Portico's table, as a `GETCHAIN` dump lists it: its name,
/// and a base chain's declaration as the renderer writes it.
struct ChainInfo {
    name: String,
    base: Option<String>,
}

fn chain_info(payload: &[u8]) -> Option<ChainInfo> {
    let a = wire::attrs(payload.get(4..)?);
    if wire::find(&a, attr::CHAIN_TABLE).map(wire::text).as_deref() != Some(TABLE) {
        return None;
    }
    let name = wire::find(&a, attr::CHAIN_NAME).map(wire::text)?;
    let base = wire::find(&a, attr::CHAIN_HOOK).map(|hook| {
        let h = wire::attrs(hook);
        let prio = wire::find(&h, attr::HOOK_PRIORITY)
            .and_then(wire::be32)
            .unwrap_or_default() as i32;
        let hook = match wire::find(&h, attr::HOOK_HOOKNUM).and_then(wire::be32) {
            Some(0) => "prerouting",
            Some(1) => "input",
            Some(2) => "forward",
            Some(3) => "output",
            _ => "postrouting",
        };
        let type_ = wire::find(&a, attr::CHAIN_TYPE)
            .map(wire::text)
            .unwrap_or_default();
        let policy = match wire::find(&a, attr::CHAIN_POLICY).and_then(wire::be32) {
            Some(0) => "drop",
            _ => "accept",
        };
        format!("type {type_} hook {hook} priority {prio} ; policy {policy} ;")
    });
    Some(ChainInfo { name, base })
}

/// A set of Portico's table, as a `GETSET` dump lists it.
struct SetInfo {
    name: String,
    flags: u32,
    key_type: u32,
    key_len: u32,
    /// A map's data type and length.
    data: Option<(u32, u32)>,
    size: Option<u32>,
}

impl SetInfo {
    fn anonymous(&self) -> bool {
        self.flags & 0x1 != 0
    }

    fn map(&self) -> bool {
        self.flags & 0x8 != 0
    }
}

fn set_info(payload: &[u8]) -> Option<SetInfo> {
    let a = wire::attrs(payload.get(4..)?);
    if wire::find(&a, attr::SET_TABLE).map(wire::text).as_deref() != Some(TABLE) {
        return None;
    }
    let num = |t: u16| wire::find(&a, t).and_then(wire::be32);
    Some(SetInfo {
        name: wire::find(&a, attr::SET_NAME).map(wire::text)?,
        flags: num(attr::SET_FLAGS).unwrap_or_default(),
        key_type: num(attr::SET_KEY_TYPE).unwrap_or_default(),
        key_len: num(attr::SET_KEY_LEN).unwrap_or_default(),
        data: num(attr::SET_DATA_TYPE).map(|t| (t, num(attr::SET_DATA_LEN).unwrap_or(0))),
        size: wire::find(&a, attr::SET_DESC)
            .and_then(|d| wire::find(&wire::attrs(d), attr::SET_DESC_SIZE).and_then(wire::be32)),
    })
}

fn nfproto(f: Family) -> u8 {
    match f {
        Family::Ipv4 => 2,
        Family::Ipv6 => 10,
    }
}

/// What an operation is about, for an error.
fn describe(op: &Op) -> String {
    match op {
        Op::AddTable(f) => format!("add table {f} {TABLE}"),
        Op::DeleteTable(f) => format!("delete table {f} {TABLE}"),
        Op::AddChain { family, name, .. } => format!("add chain {family} {TABLE} {name}"),
        Op::FlushChain { family, name } => format!("flush chain {family} {TABLE} {name}"),
        Op::DeleteChain { family, name } => format!("delete chain {family} {TABLE} {name}"),
        Op::AddRule {
            family,
            chain,
            rule,
        } => format!("add rule {family} {TABLE} {chain} {rule}"),
        Op::AddSet { family, name, .. } => format!("add set {family} {TABLE} {name}"),
        Op::FlushSet { family, name, .. } => format!("flush set {family} {TABLE} {name}"),
        Op::DeleteSet { family, name, .. } => format!("delete set {family} {TABLE} {name}"),
        Op::AddElement {
            family, set, key, ..
        } => {
            format!("add element {family} {TABLE} {set} {{ {key} … }}")
        }
        Op::DeleteElement { family, set, key } => {
            format!("delete element {family} {TABLE} {set} {{ {key} … }}")
        }
    }
}

impl Backend for Netlink {
    fn apply(&mut self, tx: &Transaction) -> Result<()> {
        tx.check()?;
        if tx.is_empty() {
            return Ok(());
        }
        let ops = tx.ops();
        let mut encoder = Encoder::new(self.shapes.clone());
        let mut buf = Vec::new();
        let begin = self.seq.wrapping_add(1);
        Message::start(
            &mut buf,
            wire::BATCH_BEGIN,
            wire::F_REQUEST,
            begin,
            0,
            SUBSYS_NFTABLES,
        );
        let index = encoder
            .encode(&mut buf, ops, begin.wrapping_add(1))
            .map_err(|(i, e)| Error::Nft(format!("netlink: {}: {e}", describe(&ops[i]))))?;
        let end = index.last().map_or(begin, |(s, _)| *s).wrapping_add(1);
        Message::start(
            &mut buf,
            wire::BATCH_END,
            wire::F_REQUEST,
            end,
            0,
            SUBSYS_NFTABLES,
        );
        self.seq = end;
        self.send(&buf)?;
        let by_seq: BTreeMap<u32, usize> = index.into_iter().collect();
        let sent: BTreeMap<u32, (usize, usize)> = wire::offsets(&buf)
            .into_iter()
            .map(|(seq, start, len)| (seq, (start, len)))
            .collect();
        let mut errors = Vec::new();
        for rx in self.drain()? {
            let messages = wire::messages(&rx).map_err(|e| Error::Nft(format!("netlink: {e}")))?;
            for m in messages.iter().filter(|m| m.type_ == wire::NLMSG_ERROR) {
                let Some(ack) = wire::error_ack(m).filter(|a| a.error != 0) else {
                    continue;
                };
                let what = match by_seq.get(&m.seq) {
                    Some(&i) => describe(&ops[i]),
                    None if m.seq == begin => "the batch".to_owned(),
                    None => format!("message {}", m.seq),
                };
                let mut text = format!("{what}: {}", std::io::Error::from_raw_os_error(-ack.error));
                if let Some(msg) = ack.message {
                    text.push_str(&format!(" ({msg})"));
                }
                // The extended ack points at the attribute at fault.
                let at = ack.offset.and_then(|offset| {
                    let (start, len) = *sent.get(&m.seq)?;
                    wire::locate(&buf[start..start + len], offset as usize)
                });
                if let Some(at) = at {
                    text.push_str(&format!(" (at its {at})"));
                }
                errors.push(text);
            }
        }
        if !errors.is_empty() {
            return Err(Error::Nft(format!(
                "netlink: the transaction was refused, nothing changed: {}",
                errors.join("; ")
            )));
        }
        Ok(())
    }

    fn list(&mut self, family: Family) -> Result<Existing> {
        let mut existing = Existing::default();
        for chain in self
            .dump(msg::GETCHAIN, family)?
            .iter()
            .filter_map(|p| chain_info(p))
        {
            if let Some(k) = chain.base.as_deref().and_then(hook_key) {
                existing.hooks.insert(chain.name.clone(), k);
            }
            existing.chains.insert(chain.name);
        }
        for set in self
            .dump(msg::GETSET, family)?
            .iter()
            .filter_map(|p| set_info(p))
        {
            if set.anonymous() {
                continue;
            }
            if let Some(size) = set.size {
                existing.sizes.insert(set.name.clone(), size);
            }
            let kind = if set.map() {
                SetKind::Map
            } else {
                SetKind::Set
            };
            existing.sets.insert(set.name, kind);
        }
        Ok(existing)
    }
}
