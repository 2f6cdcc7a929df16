//! A transaction's operations as nf_tables messages, byte for byte as nft
//! 1.0.6 writes them (`dataplane/tests/netlink.rs` holds the two side by
//! side): tables, chains, sets and maps (`type` and `typeof`, hashes and
//! intervals) and their elements, and rules (their expressions are
//! `rule.rs`'s). The elements of interval sets are written as ranges.

use super::rule;
use super::wire::{F_APPEND, F_CREATE, F_REQUEST, Message, SUBSYS_NFTABLES, attr, msg};
use crate::names::{Family, TABLE, TABLE_COMMENT};
use crate::tx::{Op, SetDecl, SetKind};
use std::collections::HashMap;
use std::net::IpAddr;

/// `NFPROTO_IPV4` / `NFPROTO_IPV6`.
fn nfproto(f: Family) -> u8 {
    match f {
        Family::Ipv4 => 2,
        Family::Ipv6 => 10,
    }
}

/// An nft data type (`src/datatype.h`): its number, its size in bytes and
/// whether its values are in network order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataType {
    /// `TYPE_*`.
    pub id: u32,
    /// Bytes.
    pub len: usize,
    /// Network order (big-endian) values.
    pub big: bool,
}

/// The data types Portico's sets hold.
fn data_type(name: &str) -> Option<DataType> {
    let (id, len, big) = match name {
        "ipv4_addr" => (7, 4, true),
        "ipv6_addr" => (8, 16, true),
        "inet_proto" => (12, 1, false),
        "inet_service" => (13, 2, true),
        "integer" => (4, 4, false),
        "mark" => (19, 4, false),
        _ => return None,
    };
    Some(DataType { id, len, big })
}

/// `NFT_DATA_VERDICT`.
const VERDICT_TYPE: u32 = 0xffff_ff00;

/// A set's declaration, as the kernel wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetShape {
    /// The key's fields.
    pub key: Vec<DataType>,
    /// A map's data: `None` for a verdict map; a set has none at all.
    pub data: Option<Option<DataType>>,
    /// Declared with `typeof`: the expressions of the key and the data,
    /// as nft keeps them in the set's userdata.
    pub typeof_: Option<Typeof>,
    /// `flags interval`: its elements are ranges (the key's last field
    /// of a concatenation).
    pub interval: bool,
}

/// The userdata of a `typeof` declaration's expressions: the key's
/// fields, and the data.
pub type Typeof = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// A type-length-value of libnftnl's userdata.
fn tlv(out: &mut Vec<u8>, t: u8, v: &[u8]) {
    out.push(t);
    out.push(u8::try_from(v.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(v);
}

fn tlv_u32(out: &mut Vec<u8>, t: u8, v: u32) {
    tlv(out, t, &v.to_ne_bytes());
}

/// An expression of a `typeof` declaration: its data type, and its
/// userdata as nft writes it (`EXPR_PAYLOAD` 7 with the protocol and
/// field of nft's templates, `EXPR_NUMGEN` 23 with mode, modulus and
/// offset).
fn typeof_expr(text: &str) -> Result<(DataType, Vec<u8>), String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut inner = Vec::new();
    let (type_name, expr) = match words.as_slice() {
        [proto, field] => {
            let (desc, template, type_name) = match (*proto, *field) {
                ("ip", "daddr") => (12, 12, "ipv4_addr"),
                ("ip", "saddr") => (12, 11, "ipv4_addr"),
                ("ip6", "daddr") => (13, 9, "ipv6_addr"),
                ("ip6", "saddr") => (13, 8, "ipv6_addr"),
                ("tcp", "dport") => (8, 2, "inet_service"),
                ("udp", "dport") => (6, 2, "inet_service"),
                ("sctp", "dport") => (10, 2, "inet_service"),
                _ => return Err(format!("typeof {text:?}")),
            };
            tlv_u32(&mut inner, 0, desc);
            tlv_u32(&mut inner, 1, template);
            (type_name, 7)
        }
        ["numgen", "random", "mod", n] => {
            let n: u32 = n.parse().map_err(|_| format!("typeof {text:?}"))?;
            tlv_u32(&mut inner, 0, 1);
            tlv_u32(&mut inner, 1, n);
            tlv_u32(&mut inner, 2, 0);
            ("integer", 23)
        }
        _ => return Err(format!("typeof {text:?}")),
    };
    let mut u = Vec::new();
    tlv_u32(&mut u, 0, expr);
    tlv(&mut u, 1, &inner);
    Ok((data_type(type_name).ok_or("no type")?, u))
}

impl SetShape {
    /// `KEY_TYPE`: the fields' types, six bits each.
    pub fn key_type(&self) -> u32 {
        self.key.iter().fold(0, |acc, t| (acc << 6) | t.id)
    }

    /// `KEY_LEN`: a lone field's size, or each field rounded up to 4.
    pub fn key_len(&self) -> usize {
        match self.key.as_slice() {
            [one] => one.len,
            many => many.iter().map(|t| t.len.next_multiple_of(4)).sum(),
        }
    }

    /// Parses `type A . B [: C]` or `typeof EXPR . EXPR [: EXPR]`.
    pub fn parse(decl: &SetDecl) -> Result<SetShape, String> {
        if let Some(text) = decl.type_.strip_prefix("typeof ") {
            let (key, data) = match text.split_once(" : ") {
                Some((k, d)) => (k, Some(d.trim())),
                None => (text, None),
            };
            let (key, key_udata): (Vec<DataType>, Vec<Vec<u8>>) = key
                .split(" . ")
                .map(typeof_expr)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .unzip();
            let data = data.map(typeof_expr).transpose()?;
            return Ok(SetShape {
                key,
                data: data.as_ref().map(|(t, _)| Some(*t)),
                typeof_: Some((key_udata, data.map(|(_, u)| u))),
                interval: decl.flags.contains(&"interval"),
            });
        }
        let text = decl
            .type_
            .strip_prefix("type ")
            .ok_or_else(|| format!("not encoded yet: a set declared {:?}", decl.type_))?;
        let (key, data) = match text.split_once(" : ") {
            Some((k, d)) => (k, Some(d.trim())),
            None => (text, None),
        };
        let key = key
            .split(" . ")
            .map(|t| data_type(t.trim()).ok_or_else(|| format!("no data type {t:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let data = match (decl.kind, data) {
            (SetKind::Set, None) => None,
            (SetKind::Map, Some("verdict")) => Some(None),
            (SetKind::Map, Some(d)) => Some(Some(
                data_type(d).ok_or_else(|| format!("no data type {d:?}"))?,
            )),
            _ => return Err(format!("a {:?} declared {:?}", decl.kind, decl.type_)),
        };
        Ok(SetShape {
            key,
            data,
            typeof_: None,
            interval: decl.flags.contains(&"interval"),
        })
    }
}

/// The `NFTA_SET_USERDATA` nft writes: byte orders and the comment
/// (libnftnl's `NFTNL_UDATA_SET_*` TLVs: type, length, value).
fn set_userdata(shape: &SetShape, decl: &SetDecl) -> Vec<u8> {
    let mut u = Vec::new();
    // nft's byte orders: 2 big-endian, 1 host, 0 for a concatenation.
    let order = |fields: &[DataType]| -> u32 {
        match fields {
            [one] if one.big => 2,
            [_] => 1,
            _ => 0,
        }
    };
    tlv_u32(&mut u, 0, order(&shape.key));
    if let Some(data) = &shape.data {
        let o = data.map_or(0, |d| order(&[d]));
        tlv_u32(&mut u, 1, o);
    }
    match &shape.typeof_ {
        Some((key, data)) => {
            // The key's expression (a concatenation, EXPR_CONCAT 13, of
            // its fields' when it has several), and the data's.
            match key.as_slice() {
                [one] => tlv(&mut u, 3, one),
                many => {
                    let mut fields = Vec::new();
                    for (i, f) in many.iter().enumerate() {
                        tlv(&mut fields, i as u8, f);
                    }
                    let mut concat = Vec::new();
                    tlv_u32(&mut concat, 0, 13);
                    tlv(&mut concat, 1, &fields);
                    tlv(&mut u, 3, &concat);
                }
            }
            if let Some(d) = data {
                tlv(&mut u, 4, d);
            }
        }
        None if shape.key.len() > 1 => {
            // A concatenation's key, as an expression of its own: nft's
            // EXPR_CONCAT (13), without sub-expressions.
            tlv(&mut u, 3, &[0, 4, 13, 0, 0, 0, 1, 0]);
        }
        None => {}
    }
    if shape.data.is_some() {
        // The data are no interval.
        tlv_u32(&mut u, 6, 0);
    }
    if let Some(c) = decl.comment {
        let mut v = c.as_bytes().to_vec();
        v.push(0);
        tlv(&mut u, 7, &v);
    }
    u
}

/// A value of `t` from its nft text: an address, a protocol, a port, a
/// number; padded to 4 bytes inside a concatenation.
fn value(t: DataType, text: &str, pad: bool) -> Result<Vec<u8>, String> {
    let bad = || format!("{text:?} is no {}", t.id);
    let mut v = match t.id {
        7 | 8 => match text.parse::<IpAddr>().map_err(|_| bad())? {
            IpAddr::V4(a) if t.id == 7 => a.octets().to_vec(),
            IpAddr::V6(a) if t.id == 8 => a.octets().to_vec(),
            _ => return Err(bad()),
        },
        12 => vec![match text {
            "tcp" => 6,
            "udp" => 17,
            "sctp" => 132,
            n => n.parse::<u8>().map_err(|_| bad())?,
        }],
        13 => text
            .parse::<u16>()
            .map_err(|_| bad())?
            .to_be_bytes()
            .to_vec(),
        _ => {
            let n = text.parse::<u32>().map_err(|_| bad())?;
            if t.big {
                n.to_be_bytes().to_vec()
            } else {
                n.to_ne_bytes().to_vec()
            }
        }
    };
    if pad {
        v.resize(v.len().next_multiple_of(4), 0);
    }
    Ok(v)
}

/// A key of `shape` from its nft text (`10.96.0.10 . tcp . 80`).
fn key(shape: &SetShape, text: &str) -> Result<Vec<u8>, String> {
    let parts: Vec<&str> = text.split(" . ").map(str::trim).collect();
    if parts.len() != shape.key.len() {
        return Err(format!("{text:?} does not have {} fields", shape.key.len()));
    }
    let pad = shape.key.len() > 1;
    let mut out = Vec::new();
    for (t, p) in shape.key.iter().zip(parts) {
        out.extend(value(*t, p, pad)?);
    }
    Ok(out)
}

/// The first and last keys of a range element: a concatenation whose
/// last field is an address, a prefix or `a-b`, or such a lone field.
fn range_key(shape: &SetShape, text: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (head, last) = match text.rsplit_once(" . ") {
        Some((h, l)) => (Some(h), l.trim()),
        None => (None, text.trim()),
    };
    let last_type = *shape.key.last().ok_or("a set without a key")?;
    let (first, end): (IpAddr, IpAddr) = if let Some((a, b)) = last.split_once('-') {
        let p = |s: &str| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("not an address: {s:?}"))
        };
        (p(a)?, p(b)?)
    } else if let Ok(net) = last.parse::<ipnet::IpNet>() {
        (net.network(), net.broadcast())
    } else {
        let a = last
            .parse::<IpAddr>()
            .map_err(|_| format!("not an address, prefix or range: {last:?}"))?;
        (a, a)
    };
    let pad = shape.key.len() > 1;
    let mut start = Vec::new();
    let mut stop = Vec::new();
    if let Some(h) = head {
        let fields = SetShape {
            key: shape.key[..shape.key.len() - 1].to_vec(),
            data: None,
            typeof_: None,
            interval: false,
        };
        let mut k = Vec::new();
        for (t, p) in fields.key.iter().zip(h.split(" . ")) {
            k.extend(value(*t, p.trim(), pad)?);
        }
        start.extend_from_slice(&k);
        stop.extend_from_slice(&k);
    }
    start.extend(value(last_type, &first.to_string(), pad)?);
    stop.extend(value(last_type, &end.to_string(), pad)?);
    Ok((start, stop))
}

/// The key after `key` (big-endian), or `None` past the last.
fn successor(key: &[u8]) -> Option<Vec<u8>> {
    let mut k = key.to_vec();
    for b in k.iter_mut().rev() {
        if *b == 0xff {
            *b = 0;
        } else {
            *b += 1;
            return Some(k);
        }
    }
    None
}

/// A verdict's code and chain (`goto x`, `jump x`, `drop`, `accept`,
/// `return`).
fn verdict(text: &str) -> Result<(u32, Option<&str>), String> {
    let mut words = text.split_whitespace();
    Ok(match (words.next(), words.next()) {
        (Some("accept"), None) => (1, None),
        (Some("drop"), None) => (0, None),
        (Some("return"), None) => (-5i32 as u32, None),
        (Some("jump"), Some(c)) => (-3i32 as u32, Some(c)),
        (Some("goto"), Some(c)) => (-4i32 as u32, Some(c)),
        _ => return Err(format!("not a verdict: {text:?}")),
    })
}

/// A base chain's declaration: type, hook number, priority, policy.
fn base_chain(spec: &str) -> Result<(String, u32, i32, Option<u32>), String> {
    let bad = || format!("not a base chain: {spec:?}");
    let b = crate::names::parse_base(spec).ok_or_else(bad)?;
    let hook = match b.hook {
        "prerouting" => 0,
        "input" => 1,
        "forward" => 2,
        "output" => 3,
        "postrouting" => 4,
        _ => return Err(bad()),
    };
    let priority = b.priority.parse::<i32>().map_err(|_| bad())?;
    let policy = match b.policy {
        Some("accept") => Some(1),
        Some("drop") => Some(0),
        None => None,
        Some(_) => return Err(bad()),
    };
    Ok((b.type_.to_owned(), hook, priority, policy))
}

/// Encodes operations into one batch's messages; remembers what it
/// declared (sets referred to later in the same batch by their ids).
#[derive(Default)]
pub struct Encoder {
    /// Sets declared in this batch: their transaction ids and shapes.
    declared: HashMap<(Family, String), (u32, SetShape)>,
    /// The shapes of sets declared before (for their elements).
    known: HashMap<(Family, String), SetShape>,
    next_id: u32,
    /// Anonymous maps so far; nft numbers them after every named set of
    /// the batch.
    anonymous: u32,
    /// Named sets declared in the batch.
    named: u32,
}

impl Encoder {
    /// An encoder that knows the shapes of sets that already exist.
    pub fn new(known: HashMap<(Family, String), SetShape>) -> Self {
        Encoder {
            known,
            ..Encoder::default()
        }
    }

    /// The shape of a set, declared in this batch or before.
    fn shape(&self, family: Family, set: &str) -> Result<(Option<u32>, SetShape), String> {
        let k = (family, set.to_owned());
        if let Some((id, s)) = self.declared.get(&k) {
            return Ok((Some(*id), s.clone()));
        }
        self.known
            .get(&k)
            .map(|s| (None, s.clone()))
            .ok_or_else(|| format!("set {set}: its declaration is unknown"))
    }

    /// Appends the message(s) of `ops` (consecutive element operations on
    /// one set go into one message) to `buf`, numbered from `seq`;
    /// returns, for each message, its sequence number and the index of
    /// its first operation.
    pub fn encode(
        &mut self,
        buf: &mut Vec<u8>,
        ops: &[Op],
        mut seq: u32,
    ) -> Result<Vec<(u32, usize)>, (usize, String)> {
        let mut out = Vec::new();
        self.named = self.next_id
            + ops
                .iter()
                .filter(|op| matches!(op, Op::AddSet { .. }))
                .count() as u32;
        let mut i = 0;
        while i < ops.len() {
            let (n, messages) = self.one(buf, ops, i, seq).map_err(|e| (i, e))?;
            for k in 0..messages {
                out.push((seq + k, i));
            }
            i += n;
            seq += messages;
        }
        Ok(out)
    }

    /// Encodes the message(s) that start at `ops[i]`: how many operations
    /// it took, and how many messages it wrote.
    fn one(
        &mut self,
        buf: &mut Vec<u8>,
        ops: &[Op],
        i: usize,
        seq: u32,
    ) -> Result<(usize, u32), String> {
        let t = |m: u16| (SUBSYS_NFTABLES << 8) | m;
        match &ops[i] {
            Op::AddTable(f) => {
                let mut m = Message::start(
                    buf,
                    t(msg::NEWTABLE),
                    F_REQUEST | F_CREATE,
                    seq,
                    nfproto(*f),
                    0,
                );
                let mut udata = vec![0, 0];
                udata.extend_from_slice(TABLE_COMMENT.as_bytes());
                udata.push(0);
                udata[1] = u8::try_from(udata.len() - 2).unwrap_or(u8::MAX);
                m.str(attr::TABLE_NAME, TABLE)
                    .u32(attr::TABLE_FLAGS, 0)
                    .bytes(attr::TABLE_USERDATA, &udata);
            }
            Op::DeleteTable(f) => {
                Message::start(buf, t(msg::DELTABLE), F_REQUEST, seq, nfproto(*f), 0)
                    .str(attr::TABLE_NAME, TABLE);
            }
            Op::AddChain { family, name, base } => {
                let mut m = Message::start(
                    buf,
                    t(msg::NEWCHAIN),
                    F_REQUEST | F_CREATE,
                    seq,
                    nfproto(*family),
                    0,
                );
                m.str(attr::CHAIN_TABLE, TABLE).str(attr::CHAIN_NAME, name);
                if let Some(spec) = base {
                    let (type_, hook, priority, policy) = base_chain(spec)?;
                    m.str(attr::CHAIN_TYPE, &type_);
                    if let Some(p) = policy {
                        m.u32(attr::CHAIN_POLICY, p);
                    }
                    m.nest(attr::CHAIN_HOOK)
                        .u32(attr::HOOK_HOOKNUM, hook)
                        .u32(attr::HOOK_PRIORITY, priority as u32)
                        .end();
                }
            }
            Op::FlushChain { family, name } => {
                Message::start(buf, t(msg::DELRULE), F_REQUEST, seq, nfproto(*family), 0)
                    .str(attr::RULE_TABLE, TABLE)
                    .str(attr::RULE_CHAIN, name);
            }
            Op::DeleteChain { family, name } => {
                Message::start(buf, t(msg::DELCHAIN), F_REQUEST, seq, nfproto(*family), 0)
                    .str(attr::CHAIN_TABLE, TABLE)
                    .str(attr::CHAIN_NAME, name);
            }
            Op::AddSet { family, name, decl } => {
                let shape = SetShape::parse(decl)?;
                self.next_id += 1;
                let id = self.next_id;
                let mut flags = 0u32;
                for f in &decl.flags {
                    flags |= match *f {
                        "interval" => 0x4,
                        "timeout" => 0x10,
                        "dynamic" => 0x20,
                        other => return Err(format!("set flag {other:?}")),
                    };
                }
                if decl.kind == SetKind::Map {
                    flags |= 0x8;
                }
                if decl.timeout.is_some() {
                    flags |= 0x10;
                }
                if shape.interval && shape.key.len() > 1 {
                    // NFT_SET_CONCAT: ranges over a concatenation.
                    flags |= 0x80;
                }
                let mut m = Message::start(
                    buf,
                    t(msg::NEWSET),
                    F_REQUEST | F_CREATE,
                    seq,
                    nfproto(*family),
                    0,
                );
                m.str(attr::SET_TABLE, TABLE)
                    .str(attr::SET_NAME, name)
                    .u32(attr::SET_FLAGS, flags)
                    .u32(attr::SET_KEY_TYPE, shape.key_type())
                    .u32(attr::SET_KEY_LEN, shape.key_len() as u32);
                match &shape.data {
                    Some(None) => {
                        m.u32(attr::SET_DATA_TYPE, VERDICT_TYPE)
                            .u32(attr::SET_DATA_LEN, 0);
                    }
                    Some(Some(d)) => {
                        m.u32(attr::SET_DATA_TYPE, d.id)
                            .u32(attr::SET_DATA_LEN, d.len as u32);
                    }
                    None => {}
                }
                m.u32(attr::SET_ID, id);
                if let Some(timeout) = decl.timeout {
                    m.u64(attr::SET_TIMEOUT, timeout.as_millis() as u64);
                }
                let concat = shape.interval && shape.key.len() > 1;
                if decl.size.is_some() || concat {
                    m.nest(attr::SET_DESC);
                    if let Some(size) = decl.size {
                        m.u32(attr::SET_DESC_SIZE, size);
                    }
                    if concat {
                        m.nest(attr::SET_DESC_CONCAT);
                        for f in &shape.key {
                            m.nest(attr::LIST_ELEM)
                                .u32(attr::SET_FIELD_LEN, f.len as u32)
                                .end();
                        }
                        m.end();
                    }
                    m.end();
                }
                m.bytes(attr::SET_USERDATA, &set_userdata(&shape, decl));
                drop(m);
                self.declared.insert((*family, name.clone()), (id, shape));
            }
            Op::FlushSet { family, name, .. } => {
                // nft names the set first here.
                Message::start(buf, t(msg::DELSETELEM), F_REQUEST, seq, nfproto(*family), 0)
                    .str(attr::SET_ELEM_LIST_SET, name)
                    .str(attr::SET_ELEM_LIST_TABLE, TABLE);
            }
            Op::DeleteSet { family, name, .. } => {
                Message::start(buf, t(msg::DELSET), F_REQUEST, seq, nfproto(*family), 0)
                    .str(attr::SET_TABLE, TABLE)
                    .str(attr::SET_NAME, name);
                self.declared.remove(&(*family, name.clone()));
                self.known.remove(&(*family, name.clone()));
            }
            Op::AddElement { family, set, .. } | Op::DeleteElement { family, set, .. } => {
                return Ok((self.elements(buf, ops, i, seq, *family, set)?, 1));
            }
            Op::AddRule {
                family,
                chain,
                rule,
            } => {
                let exprs = rule::parse(*family, rule)?;
                let mut seq = seq;
                let mut anonymous = None;
                if let Some(arms) = rule::anonymous_vmap(rule) {
                    // The map is declared, and filled, in messages of
                    // its own before the rule.
                    anonymous = Some(self.anonymous_vmap(buf, seq, *family, &arms)?);
                    seq += 2;
                }
                let declared = &self.declared;
                let id_of = |set: &str| -> Option<u32> {
                    if set == rule::ANONYMOUS_VMAP {
                        return anonymous;
                    }
                    declared.get(&(*family, set.to_owned())).map(|(id, _)| *id)
                };
                let mut m =
                    Message::start(buf, t(msg::NEWRULE), RULE_FLAGS, seq, nfproto(*family), 0);
                m.str(attr::RULE_TABLE, TABLE)
                    .str(attr::RULE_CHAIN, chain)
                    .nest(attr::RULE_EXPRESSIONS);
                for e in &exprs {
                    e.encode(&mut m, &id_of);
                }
                m.end();
                return Ok((1, if anonymous.is_some() { 3 } else { 1 }));
            }
        }
        Ok((1, 1))
    }

    /// The anonymous map of a `numgen … vmap { … }` rule, declared and
    /// filled (two messages from `seq`); its transaction id.
    fn anonymous_vmap(
        &mut self,
        buf: &mut Vec<u8>,
        seq: u32,
        family: Family,
        arms: &[(u32, String)],
    ) -> Result<u32, String> {
        let t = |m: u16| (SUBSYS_NFTABLES << 8) | m;
        self.anonymous += 1;
        let id = self.named + self.anonymous;
        {
            let mut m = Message::start(
                buf,
                t(msg::NEWSET),
                F_REQUEST | F_CREATE,
                seq,
                nfproto(family),
                0,
            );
            m.str(attr::SET_TABLE, TABLE)
                .str(attr::SET_NAME, rule::ANONYMOUS_VMAP)
                // anonymous, constant, a map
                .u32(attr::SET_FLAGS, 0x1 | 0x2 | 0x8)
                .u32(attr::SET_KEY_TYPE, 4)
                .u32(attr::SET_KEY_LEN, 4)
                .u32(attr::SET_DATA_TYPE, VERDICT_TYPE)
                .u32(attr::SET_DATA_LEN, 0)
                .u32(attr::SET_ID, id)
                .nest(attr::SET_DESC)
                .u32(attr::SET_DESC_SIZE, arms.len() as u32)
                .end();
            // nft's userdata: the key in host order, the data a verdict
            // expression (EXPR_VERDICT, 1), no interval.
            let mut u = Vec::new();
            for (t, v) in [(0u8, 1u32), (1, 0)] {
                u.extend_from_slice(&[t, 4]);
                u.extend_from_slice(&v.to_ne_bytes());
            }
            u.extend_from_slice(&[4, 8, 0, 4]);
            u.extend_from_slice(&1u32.to_ne_bytes());
            u.extend_from_slice(&[1, 0, 6, 4]);
            u.extend_from_slice(&0u32.to_ne_bytes());
            m.bytes(attr::SET_USERDATA, &u);
        }
        let mut m = Message::start(
            buf,
            t(msg::NEWSETELEM),
            F_REQUEST | F_CREATE,
            seq + 1,
            nfproto(family),
            0,
        );
        m.str(attr::SET_ELEM_LIST_TABLE, TABLE)
            .str(attr::SET_ELEM_LIST_SET, rule::ANONYMOUS_VMAP)
            .u32(4, id)
            .nest(attr::SET_ELEM_LIST_ELEMENTS);
        for (n, (slot, v)) in arms.iter().enumerate() {
            let (code, chain) = verdict(v)?;
            m.nest(u16::try_from(n + 1).unwrap_or(u16::MAX))
                .nest(attr::SET_ELEM_KEY)
                .bytes(attr::DATA_VALUE, &slot.to_ne_bytes())
                .end()
                .nest(attr::SET_ELEM_DATA)
                .nest(attr::DATA_VERDICT)
                .u32(attr::VERDICT_CODE, code);
            if let Some(c) = chain {
                m.str(attr::VERDICT_CHAIN, c);
            }
            m.end().end().end();
        }
        Ok(id)
    }

    /// One message of the element operations on one set from `ops[i]`.
    fn elements(
        &mut self,
        buf: &mut Vec<u8>,
        ops: &[Op],
        i: usize,
        seq: u32,
        family: Family,
        set: &str,
    ) -> Result<usize, String> {
        /// Elements per message: a netlink attribute holds at most 64 KiB.
        const PER_MESSAGE: usize = 512;
        let add = matches!(ops[i], Op::AddElement { .. });
        let (id, shape) = self.shape(family, set)?;
        let (type_, flags) = if add {
            (msg::NEWSETELEM, F_REQUEST | F_CREATE)
        } else {
            (msg::DELSETELEM, F_REQUEST)
        };
        let mut m = Message::start(
            buf,
            (SUBSYS_NFTABLES << 8) | type_,
            flags,
            seq,
            nfproto(family),
            0,
        );
        m.str(attr::SET_ELEM_LIST_TABLE, TABLE)
            .str(attr::SET_ELEM_LIST_SET, set);
        // A set declared in this batch is named by its id too (on adds).
        if let Some(id) = id.filter(|_| add) {
            m.u32(4, id);
        }
        m.nest(attr::SET_ELEM_LIST_ELEMENTS);
        let mut n = 0;
        let mut listed = 0usize;
        while let Some(op) = ops.get(i + n).filter(|_| n < PER_MESSAGE) {
            let (k, v) = match op {
                Op::AddElement {
                    family: f,
                    set: s,
                    key,
                    value,
                } if add && *f == family && *s == set => (key, value.as_deref()),
                Op::DeleteElement {
                    family: f,
                    set: s,
                    key,
                } if !add && *f == family && *s == set => (key, None),
                _ => break,
            };
            // nft numbers the elements of a list from 1.
            if shape.interval {
                // A range: one element with its end (a concatenation),
                // or a start and an end element.
                let (start, end) = range_key(&shape, k)?;
                let mut next = |m: &mut Message<'_>| {
                    listed += 1;
                    m.nest(u16::try_from(listed).unwrap_or(u16::MAX));
                };
                if shape.key.len() > 1 {
                    next(&mut m);
                    m.nest(attr::SET_ELEM_KEY)
                        .bytes(attr::DATA_VALUE, &start)
                        .end()
                        .nest(attr::SET_ELEM_KEY_END)
                        .bytes(attr::DATA_VALUE, &end)
                        .end()
                        .end();
                } else {
                    next(&mut m);
                    m.nest(attr::SET_ELEM_KEY)
                        .bytes(attr::DATA_VALUE, &start)
                        .end()
                        .end();
                    if let Some(after) = successor(&end) {
                        next(&mut m);
                        m.u32(attr::SET_ELEM_FLAGS, 1)
                            .nest(attr::SET_ELEM_KEY)
                            .bytes(attr::DATA_VALUE, &after)
                            .end()
                            .end();
                    }
                }
                n += 1;
                continue;
            }
            listed += 1;
            m.nest(u16::try_from(listed).unwrap_or(u16::MAX))
                .nest(attr::SET_ELEM_KEY)
                .bytes(attr::DATA_VALUE, &key(&shape, k)?)
                .end();
            match (&shape.data, v) {
                (Some(None), Some(v)) => {
                    let (code, chain) = verdict(v)?;
                    m.nest(attr::SET_ELEM_DATA)
                        .nest(attr::DATA_VERDICT)
                        .u32(attr::VERDICT_CODE, code);
                    if let Some(c) = chain {
                        m.str(attr::VERDICT_CHAIN, c);
                    }
                    m.end().end();
                }
                (Some(Some(d)), Some(v)) => {
                    m.nest(attr::SET_ELEM_DATA)
                        .bytes(attr::DATA_VALUE, &value(*d, v, false)?)
                        .end();
                }
                (None, None) | (Some(_), None) if !add || shape.data.is_none() => {}
                _ => return Err(format!("element {k:?} of {set}: key and value do not fit")),
            }
            m.end();
            n += 1;
        }
        Ok(n)
    }
}

/// Flags of a rule's message (appended).
pub const RULE_FLAGS: u16 = F_REQUEST | F_CREATE | F_APPEND;
