//! Reading Portico's tables back from the kernel: chains and their rules,
//! sets and their elements, as the renderer writes them (the rules'
//! expressions turned back into its rule shapes), so that what the kernel
//! holds can be traced and compared with what was meant.

use super::wire::{self, attr};
use crate::names::Family;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One expression as the kernel lists it: its name and attributes.
pub(crate) struct Expr {
    name: String,
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Expr {
    pub(crate) fn parse(list_elem: &[u8]) -> Option<Expr> {
        let a = wire::attrs(list_elem);
        let name = wire::find(&a, 1).map(wire::text)?;
        let attrs = wire::find(&a, 2)
            .map(wire::attrs)
            .unwrap_or_default()
            .into_iter()
            .map(|(t, v)| (t, v.to_vec()))
            .collect();
        Some(Expr { name, attrs })
    }

    fn get(&self, t: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(x, _)| *x == t)
            .map(|(_, v)| v.as_slice())
    }

    fn u32(&self, t: u16) -> Option<u32> {
        self.get(t).and_then(wire::be32)
    }

    fn str(&self, t: u16) -> Option<String> {
        self.get(t).map(wire::text)
    }

    /// A nested `DATA_VALUE`.
    fn value(&self, t: u16) -> Option<Vec<u8>> {
        let a = wire::attrs(self.get(t)?);
        wire::find(&a, attr::DATA_VALUE).map(<[u8]>::to_vec)
    }
}

/// A verdict's text from its code and chain.
pub(crate) fn verdict_text(code: u32, chain: Option<String>) -> Option<String> {
    Some(match (code as i32, chain) {
        (1, _) => "accept".into(),
        (0, _) => "drop".into(),
        (-5, _) => "return".into(),
        (-3, Some(c)) => format!("jump {c}"),
        (-4, Some(c)) => format!("goto {c}"),
        _ => return None,
    })
}

/// A `DATA_VERDICT` nest's text.
pub(crate) fn verdict_of(data: &[u8]) -> Option<String> {
    let a = wire::attrs(data);
    let v = wire::attrs(wire::find(&a, attr::DATA_VERDICT)?);
    let code = wire::find(&v, attr::VERDICT_CODE).and_then(wire::be32)?;
    verdict_text(code, wire::find(&v, attr::VERDICT_CHAIN).map(wire::text))
}

fn address(bytes: &[u8]) -> Option<IpAddr> {
    Some(match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    })
}

fn proto_name(n: u8) -> String {
    match n {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// Turns a rule's expressions back into the renderer's text.
pub(crate) struct Decoder<'a> {
    family: Family,
    exprs: &'a [Expr],
    at: usize,
    words: Vec<String>,
    /// The elements of the table's anonymous maps, by name.
    anonymous: &'a BTreeMap<String, Vec<(u32, String)>>,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(
        family: Family,
        exprs: &'a [Expr],
        anonymous: &'a BTreeMap<String, Vec<(u32, String)>>,
    ) -> Self {
        Decoder {
            family,
            exprs,
            at: 0,
            words: Vec::new(),
            anonymous,
        }
    }

    fn peek(&self, k: usize) -> Option<&'a Expr> {
        self.exprs.get(self.at + k)
    }

    fn f(&self) -> &'static str {
        self.family.nft()
    }

    fn addr_field(&self, offset: u32) -> Option<&'static str> {
        Some(match (self.family, offset) {
            (Family::Ipv4, 12) | (Family::Ipv6, 8) => "saddr",
            (Family::Ipv4, 16) | (Family::Ipv6, 24) => "daddr",
            _ => return None,
        })
    }

    fn addr_len(&self) -> u32 {
        match self.family {
            Family::Ipv4 => 4,
            Family::Ipv6 => 16,
        }
    }

    /// The whole rule's text.
    pub(crate) fn text(mut self) -> Result<String, String> {
        while let Some(e) = self.peek(0) {
            let before = self.at;
            match e.name.as_str() {
                "ct" => self.ct()?,
                "meta" => self.meta()?,
                "fib" => self.fib()?,
                "payload" => self.fields()?,
                "numgen" => self.numgen_vmap()?,
                "immediate" => {
                    let data = e.get(2).ok_or("an immediate without data")?;
                    self.words
                        .push(verdict_of(data).ok_or("an immediate that is no verdict")?);
                    self.at += 1;
                }
                "masq" => {
                    self.words.push("masquerade fully-random".into());
                    self.at += 1;
                }
                "reject" => {
                    self.words.push("reject".into());
                    self.at += 1;
                }
                other => return Err(format!("an expression {other} out of place")),
            }
            if self.at == before {
                return Err(format!("stuck at expression {}", self.at + 1));
            }
        }
        Ok(self.words.join(" "))
    }

    fn ct(&mut self) -> Result<(), String> {
        let key = self
            .peek(0)
            .and_then(|e| e.u32(2))
            .ok_or("ct without key")?;
        self.words.push(
            match key {
                0 => "ct state new",
                2 => "ct status dnat",
                k => return Err(format!("ct key {k}")),
            }
            .into(),
        );
        self.at += 3;
        Ok(())
    }

    fn fib(&mut self) -> Result<(), String> {
        let flags = self
            .peek(0)
            .and_then(|e| e.u32(3))
            .ok_or("fib without flags")?;
        let which = if flags & 1 != 0 { "saddr" } else { "daddr" };
        self.words.push(format!("fib {which} type local"));
        self.at += 2;
        Ok(())
    }

    fn meta(&mut self) -> Result<(), String> {
        let e = self.peek(0).ok_or("no expression")?;
        let key = e.u32(2).ok_or("meta without key")?;
        match key {
            // mark
            3 => {
                let bitwise = self.peek(1).ok_or("meta mark alone")?;
                let mask = u32::from_ne_bytes(
                    bitwise
                        .value(4)
                        .and_then(|v| v.try_into().ok())
                        .ok_or("no mask")?,
                );
                let xor = u32::from_ne_bytes(
                    bitwise
                        .value(5)
                        .and_then(|v| v.try_into().ok())
                        .ok_or("no xor")?,
                );
                match self.peek(2).map(|e| e.name.as_str()) {
                    Some("meta") => {
                        let op = if mask == u32::MAX { "^" } else { "|" };
                        self.words
                            .push(format!("meta mark set meta mark {op} 0x{xor:08x}"));
                    }
                    Some("cmp") => {
                        let v = self.peek(2).and_then(|e| e.value(3)).ok_or("no value")?;
                        let v = u32::from_ne_bytes(v.try_into().map_err(|_| "a short value")?);
                        self.words
                            .push(format!("meta mark & 0x{mask:08x} == 0x{v:08x}"));
                    }
                    _ => return Err("meta mark and then?".into()),
                }
                self.at += 3;
                Ok(())
            }
            // l4proto: a match (then a dnat, a reject, …), or a field
            16 if self.peek(1).is_some_and(|e| e.name == "cmp") => {
                let p = self
                    .peek(1)
                    .and_then(|e| e.value(3))
                    .and_then(|v| v.first().copied())
                    .ok_or("no protocol")?;
                let proto = proto_name(p);
                self.words.push(format!("meta l4proto {proto}"));
                self.at += 2;
                if self.peek(0).is_some_and(|e| e.name == "reject") {
                    self.words.push("reject with tcp reset".into());
                    self.at += 1;
                } else if self.exprs[self.at..].iter().any(|e| e.name == "nat") {
                    self.dnat(&proto)?;
                }
                Ok(())
            }
            16 => self.fields(),
            k => Err(format!("meta key {k}")),
        }
    }

    /// Field loads (a concatenation), then what uses them: a lookup, an
    /// update, or a prefix match.
    fn fields(&mut self) -> Result<(), String> {
        let mut fields: Vec<String> = Vec::new();
        let mut last_payload = None;
        while let Some(e) = self.peek(0) {
            match e.name.as_str() {
                "payload" => {
                    let base = e.u32(2).unwrap_or_default();
                    let offset = e.u32(3).unwrap_or_default();
                    let len = e.u32(4).unwrap_or_default();
                    last_payload = Some((offset, len));
                    fields.push(match base {
                        1 => format!(
                            "{} {}",
                            self.f(),
                            self.addr_field(offset).ok_or("a network field")?
                        ),
                        2 if offset == 2 => "th dport".into(),
                        _ => return Err(format!("payload {base} + {offset}")),
                    });
                }
                "meta" if e.u32(2) == Some(16) => fields.push("meta l4proto".into()),
                "byteorder" => {}
                _ => break,
            }
            self.at += 1;
        }
        let next = self.peek(0).ok_or("fields and nothing")?;
        match next.name.as_str() {
            "lookup" => {
                let set = next.str(1).ok_or("a lookup without set")?;
                let inv = next.u32(5).is_some_and(|f| f & 1 != 0);
                let vmap = next.u32(3) == Some(0);
                let mut text = fields.join(" . ");
                if inv {
                    text.push_str(" !=");
                }
                if vmap {
                    text.push_str(" vmap");
                }
                text.push_str(&format!(" @{set}"));
                self.words.push(text);
                self.at += 1;
            }
            "dynset" => {
                let set = next.str(1).ok_or("an update without set")?;
                self.words
                    .push(format!("update @{set} {{ {} }}", fields.join(" . ")));
                self.at += 1;
            }
            "cmp" | "bitwise" => {
                let (_, len) = last_payload.ok_or("a prefix without its field")?;
                let mut bits = len * 8;
                if next.name == "bitwise" {
                    let mask = next.value(4).ok_or("no mask")?;
                    bits = mask.iter().map(|b| b.count_ones()).sum();
                    self.at += 1;
                }
                let cmp = self.peek(0).ok_or("no comparison")?;
                let mut bytes = cmp.value(3).ok_or("no value")?;
                bytes.resize(self.addr_len() as usize, 0);
                let addr = address(&bytes).ok_or("not an address")?;
                let net = ipnet::IpNet::new(addr, bits as u8).map_err(|e| e.to_string())?;
                let op = if cmp.u32(2) == Some(1) { "!= " } else { "" };
                self.words.push(format!("{} {op}{net}", fields.join(" . ")));
                self.at += 1;
            }
            other => return Err(format!("fields then {other}")),
        }
        Ok(())
    }

    /// `dnat ip to ADDR:PORT`, or the pick's two-map form.
    fn dnat(&mut self, proto: &str) -> Result<(), String> {
        let f = self.f();
        let first = self.peek(0).ok_or("a dnat without expressions")?;
        if first.name == "immediate" {
            let addr = first
                .value(2)
                .as_deref()
                .and_then(address)
                .ok_or("no address")?;
            let port = self
                .peek(1)
                .and_then(|e| e.value(2))
                .and_then(|v| Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?)))
                .ok_or("no port")?;
            self.words.push(format!(
                "dnat {f} to {}",
                std::net::SocketAddr::new(addr, port)
            ));
            self.at += 3;
            return Ok(());
        }
        // KEY . numgen random mod N [offset O] map @BACKENDS : KEY map @PORTS
        let mut key = Vec::new();
        while let Some(e) = self.peek(0).filter(|e| e.name == "payload") {
            key.push(if e.u32(2) == Some(1) {
                format!("{f} daddr")
            } else {
                format!("{proto} dport")
            });
            self.at += 1;
        }
        let numgen = self
            .peek(0)
            .filter(|e| e.name == "numgen")
            .ok_or("no numgen")?;
        let modulus = numgen.u32(2).ok_or("no modulus")?;
        let offset = numgen.u32(4).unwrap_or_default();
        let backends = self.peek(1).and_then(|e| e.str(1)).ok_or("no backends")?;
        self.at += 2;
        while self.peek(0).is_some_and(|e| e.name == "payload") {
            self.at += 1;
        }
        let ports = self.peek(0).and_then(|e| e.str(1)).ok_or("no ports")?;
        self.at += 2;
        let key = key.join(" . ");
        let offset = if offset > 0 {
            format!(" offset {offset}")
        } else {
            String::new()
        };
        self.words.push(format!(
            "dnat {f} to {key} . numgen random mod {modulus}{offset} map @{backends} : {key} map @{ports}"
        ));
        Ok(())
    }

    /// `numgen random mod N vmap { 0 : …, … }` (an anonymous map).
    fn numgen_vmap(&mut self) -> Result<(), String> {
        let modulus = self.peek(0).and_then(|e| e.u32(2)).ok_or("no modulus")?;
        let set = self.peek(1).and_then(|e| e.str(1)).ok_or("no map")?;
        let arms = self
            .anonymous
            .get(&set)
            .ok_or_else(|| format!("no elements of {set}"))?;
        let arms: Vec<String> = arms.iter().map(|(s, v)| format!("{s} : {v}")).collect();
        self.words.push(format!(
            "numgen random mod {modulus} vmap {{ {} }}",
            arms.join(", ")
        ));
        self.at += 2;
        Ok(())
    }
}

/// A set's key and data, from the kernel's declaration.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// The key's fields: (type, size).
    pub fields: Vec<(u32, usize)>,
    /// A map's data type and size (`0xffffff00` for verdicts).
    pub data: Option<(u32, usize)>,
    pub interval: bool,
}

fn type_len(t: u32) -> usize {
    match t {
        7 => 4,
        8 => 16,
        12 => 1,
        13 => 2,
        _ => 4,
    }
}

impl Layout {
    /// From `KEY_TYPE` (six bits per field), `KEY_LEN`, the data type and
    /// the flags.
    pub(crate) fn of(key_type: u32, key_len: u32, data: Option<(u32, u32)>, flags: u32) -> Layout {
        let mut types = Vec::new();
        let mut k = key_type;
        while k != 0 {
            types.push(k & 0x3f);
            k >>= 6;
        }
        types.reverse();
        if types.is_empty() {
            types.push(4);
        }
        let fields = if types.len() == 1 {
            vec![(types[0], key_len as usize)]
        } else {
            types.into_iter().map(|t| (t, type_len(t))).collect()
        };
        Layout {
            fields,
            data: data.map(|(t, l)| (t, l as usize)),
            interval: flags & 0x4 != 0,
        }
    }

    fn field(t: u32, bytes: &[u8]) -> String {
        match t {
            7 | 8 => address(bytes).map_or_else(|| format!("{bytes:?}"), |a| a.to_string()),
            12 => proto_name(bytes.first().copied().unwrap_or_default()),
            13 => bytes
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]).to_string())
                .unwrap_or_default(),
            _ => bytes
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(|b| u32::from_ne_bytes(b).to_string())
                .unwrap_or_default(),
        }
    }

    /// A key's text, fields split as they were packed.
    pub(crate) fn key(&self, bytes: &[u8]) -> Vec<String> {
        let pad = self.fields.len() > 1;
        let mut at = 0;
        let mut out = Vec::new();
        for (t, len) in &self.fields {
            let end = (at + len).min(bytes.len());
            out.push(Self::field(*t, &bytes[at..end]));
            at += if pad { len.next_multiple_of(4) } else { *len };
        }
        out
    }

    /// A data value's text.
    pub(crate) fn data(&self, value: &[u8]) -> Option<String> {
        let (t, _) = self.data?;
        Some(Self::field(t, value))
    }
}

/// The text of a range's last field: an address, or a prefix.
fn range_text(first: IpAddr, last: IpAddr) -> String {
    if first == last {
        return first.to_string();
    }
    let (a, b): (u128, u128) = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a).into(), u32::from(b).into()),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.into(), b.into()),
        _ => return format!("{first}-{last}"),
    };
    let size = b.wrapping_sub(a).wrapping_add(1);
    let width: u32 = if first.is_ipv4() { 32 } else { 128 };
    if size.is_power_of_two() && a % size == 0 {
        let plen = width - size.trailing_zeros();
        return format!("{first}/{plen}");
    }
    format!("{first}-{last}")
}

/// The address before `bytes` (big-endian), for an interval's end.
fn predecessor(bytes: &[u8]) -> Vec<u8> {
    let mut k = bytes.to_vec();
    for b in k.iter_mut().rev() {
        if *b == 0 {
            *b = 0xff;
        } else {
            *b -= 1;
            break;
        }
    }
    k
}

/// One element as the kernel lists it.
pub(crate) struct Element {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Option<Vec<u8>>,
    pub end: bool,
}

/// A set's elements as the renderer writes them: key text to value text.
pub(crate) fn elements(layout: &Layout, elems: &[Element]) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    let value = |e: &Element| -> Option<String> {
        let d = e.data.as_ref()?;
        match layout.data {
            Some((0xffff_ff00, _)) => verdict_of(d),
            Some(_) => {
                let a = wire::attrs(d);
                layout.data(wire::find(&a, attr::DATA_VALUE)?)
            }
            None => None,
        }
    };
    if !layout.interval {
        for e in elems {
            out.insert(layout.key(&e.key).join(" . "), value(e));
        }
        return out;
    }
    if layout.fields.len() > 1 {
        // Concatenated ranges: a key and its end.
        for e in elems {
            let mut first = layout.key(&e.key);
            let last = layout.key(e.key_end.as_ref().unwrap_or(&e.key));
            let (Some(a), Some(b)) = (
                first.last().and_then(|s| s.parse::<IpAddr>().ok()),
                last.last().and_then(|s| s.parse::<IpAddr>().ok()),
            ) else {
                continue;
            };
            first.pop();
            first.push(range_text(a, b));
            out.insert(first.join(" . "), value(e));
        }
        return out;
    }
    // A start, then an end element (the address after the range); the
    // kernel lists them from the highest.
    let mut sorted: Vec<&Element> = elems.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key).then(b.end.cmp(&a.end)));
    let mut start: Option<&Element> = None;
    for e in sorted {
        match (e.end, start) {
            (false, _) => start = Some(e),
            (true, Some(s)) => {
                let (Some(a), Some(b)) = (address(&s.key), address(&predecessor(&e.key))) else {
                    continue;
                };
                out.insert(range_text(a, b), value(s));
                start = None;
            }
            (true, None) => {}
        }
    }
    if let Some(s) = start
        && let Some(a) = address(&s.key)
    {
        // A range to the last address has no end element.
        let last = match a {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::BROADCAST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(u128::MAX)),
        };
        out.insert(range_text(a, last), value(s));
    }
    out
}
