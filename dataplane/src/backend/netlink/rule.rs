//! Rules as nf_tables expressions: the rule shapes Portico writes (the
//! renderer's, and nothing else), parsed from their nft text and encoded
//! as nft 1.0.6 encodes them: the same expressions, registers and
//! attribute order (`dataplane/tests/netlink.rs` compares the bytes).

use super::wire::{Message, attr};
use crate::names::Family;
use std::net::IpAddr;

/// `NFT_REG_1` (16 bytes; its 4-byte parts are `NFT_REG32_00..03`).
const REG_1: u32 = 1;
/// `NFT_REG32_00`.
const REG32_00: u32 = 8;

/// The register nft gives the field at byte `offset` of a
/// concatenation that starts in `NFT_REG_1`: a 16-byte register where the
/// field starts one, else a 4-byte one.
fn reg_at(offset: usize) -> u32 {
    if offset.is_multiple_of(16) {
        REG_1 + (offset / 16) as u32
    } else {
        REG32_00 + (offset / 4) as u32
    }
}

/// `NFT_PAYLOAD_NETWORK_HEADER`, `NFT_PAYLOAD_TRANSPORT_HEADER`.
const NETWORK: u32 = 1;
const TRANSPORT: u32 = 2;

/// One expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `payload load LEN @ BASE + OFFSET => DREG`.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `meta load KEY => DREG`.
    Meta { key: u32, dreg: u32 },
    /// `meta set KEY with SREG`.
    MetaSet { key: u32, sreg: u32 },
    /// `ct load KEY => DREG`.
    Ct { key: u32, dreg: u32 },
    /// `bitwise DREG = (SREG & MASK) ^ XOR`; `op`: nft names the
    /// operation (it does for a statement, not for a match).
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
        op: bool,
    },
    /// `cmp OP SREG DATA`.
    Cmp { sreg: u32, op: u32, data: Vec<u8> },
    /// `lookup SREG set SET [dreg DREG] [inverted]`.
    Lookup {
        sreg: u32,
        set: String,
        dreg: Option<u32>,
        inv: bool,
    },
    /// `immediate DREG DATA`, a value.
    Value { dreg: u32, data: Vec<u8> },
    /// `immediate reg 0 VERDICT [-> CHAIN]`.
    Verdict { code: u32, chain: Option<String> },
    /// `fib FLAGS type => DREG`.
    Fib { flags: u32, dreg: u32 },
    /// `masq flags FLAGS`.
    Masq { flags: u32 },
    /// `reject type TYPE code CODE`.
    Reject { type_: u32, code: u8 },
    /// `nat dnat FAMILY addr_min REG proto_min REG flags 0x2`.
    Dnat { family: u32, addr: u32, proto: u32 },
    /// `numgen DREG = random mod MODULUS offset OFFSET`.
    Numgen {
        dreg: u32,
        modulus: u32,
        offset: u32,
    },
    /// `byteorder DREG = hton(SREG, SIZE, LEN)`.
    Hton {
        sreg: u32,
        dreg: u32,
        size: u32,
        len: u32,
    },
    /// `dynset update reg_key SREG set SET`.
    Update { sreg: u32, set: String },
}

impl Expr {
    /// Appends the expression (a list element) to a rule's message.
    /// `id_of`: the transaction id of a set declared in the same batch.
    pub fn encode(&self, m: &mut Message<'_>, id_of: &dyn Fn(&str) -> Option<u32>) {
        let name = match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Cmp { .. } => "cmp",
            Expr::Lookup { .. } => "lookup",
            Expr::Value { .. } | Expr::Verdict { .. } => "immediate",
            Expr::Fib { .. } => "fib",
            Expr::Masq { .. } => "masq",
            Expr::Reject { .. } => "reject",
            Expr::Dnat { .. } => "nat",
            Expr::Numgen { .. } => "numgen",
            Expr::Hton { .. } => "byteorder",
            Expr::Update { .. } => "dynset",
        };
        m.nest(attr::LIST_ELEM).str(1, name).nest(2);
        let value = |m: &mut Message<'_>, t: u16, v: &[u8]| {
            m.nest(t).bytes(attr::DATA_VALUE, v).end();
        };
        match self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                m.u32(1, *dreg).u32(2, *base).u32(3, *offset).u32(4, *len);
            }
            Expr::Meta { key, dreg } => {
                m.u32(2, *key).u32(1, *dreg);
            }
            Expr::MetaSet { key, sreg } => {
                m.u32(2, *key).u32(3, *sreg);
            }
            Expr::Ct { key, dreg } => {
                m.u32(2, *key).u32(1, *dreg);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
                op,
            } => {
                m.u32(1, *sreg).u32(2, *dreg);
                if *op {
                    m.u32(6, 0);
                }
                m.u32(3, mask.len() as u32);
                value(m, 4, mask);
                value(m, 5, xor);
            }
            Expr::Cmp { sreg, op, data } => {
                m.u32(1, *sreg).u32(2, *op);
                value(m, 3, data);
            }
            Expr::Lookup {
                sreg,
                set,
                dreg,
                inv,
            } => {
                m.u32(2, *sreg);
                if let Some(d) = dreg {
                    m.u32(3, *d);
                }
                m.str(1, set);
                if let Some(id) = id_of(set) {
                    m.u32(4, id);
                }
                if *inv {
                    m.u32(5, 1);
                }
            }
            Expr::Value { dreg, data } => {
                m.u32(1, *dreg);
                value(m, 2, data);
            }
            Expr::Verdict { code, chain } => {
                m.u32(1, 0)
                    .nest(2)
                    .nest(attr::DATA_VERDICT)
                    .u32(attr::VERDICT_CODE, *code);
                if let Some(c) = chain {
                    m.str(attr::VERDICT_CHAIN, c);
                }
                m.end().end();
            }
            Expr::Fib { flags, dreg } => {
                m.u32(3, *flags).u32(2, 3).u32(1, *dreg);
            }
            Expr::Masq { flags } => {
                m.u32(1, *flags);
            }
            Expr::Reject { type_, code } => {
                m.u32(1, *type_).bytes(2, &[*code]);
            }
            Expr::Dnat {
                family,
                addr,
                proto,
            } => {
                m.u32(1, 1)
                    .u32(2, *family)
                    .u32(3, *addr)
                    .u32(5, *proto)
                    .u32(7, 2);
            }
            Expr::Numgen {
                dreg,
                modulus,
                offset,
            } => {
                m.u32(1, *dreg).u32(2, *modulus).u32(3, 1).u32(4, *offset);
            }
            Expr::Hton {
                sreg,
                dreg,
                size,
                len,
            } => {
                m.u32(1, *sreg)
                    .u32(2, *dreg)
                    .u32(3, 1)
                    .u32(4, *len)
                    .u32(5, *size);
            }
            Expr::Update { sreg, set } => {
                m.u32(4, *sreg).u32(3, 1).str(1, set);
                if let Some(id) = id_of(set) {
                    m.u32(2, id);
                }
            }
        }
        m.end().end();
    }
}

/// `NFT_CMP_EQ`, `NFT_CMP_NEQ`.
const EQ: u32 = 0;
const NEQ: u32 = 1;
/// `NFT_META_MARK`, `NFT_META_L4PROTO`.
const META_MARK: u32 = 3;
const META_L4PROTO: u32 = 16;
/// `NFT_CT_STATE`, `NFT_CT_STATUS`.
const CT_STATE: u32 = 0;
const CT_STATUS: u32 = 2;

/// The parser's state: the rule's words, and where it is.
struct Parser<'a> {
    family: Family,
    words: Vec<&'a str>,
    at: usize,
    out: Vec<Expr>,
}

/// The expressions of `rule` in a table of `family`, or why it is not a
/// shape Portico writes.
pub fn parse(family: Family, rule: &str) -> Result<Vec<Expr>, String> {
    let mut p = Parser {
        family,
        words: rule.split_whitespace().collect(),
        at: 0,
        out: Vec::new(),
    };
    p.rule().map_err(|e| format!("{e} in the rule {rule:?}"))?;
    Ok(p.out)
}

fn proto_number(p: &str) -> Option<u8> {
    Some(match p {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        _ => return None,
    })
}

fn hex_u32(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|_| format!("not a number: {s:?}"))
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.at).copied()
    }

    fn next(&mut self) -> Result<&'a str, String> {
        let w = self.peek().ok_or("unexpected end")?;
        self.at += 1;
        Ok(w)
    }

    fn eat(&mut self, w: &str) -> bool {
        if self.peek() == Some(w) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, w: &str) -> Result<(), String> {
        if self.eat(w) {
            Ok(())
        } else {
            Err(format!("expected {w:?} at word {}", self.at + 1))
        }
    }

    fn f(&self) -> &'static str {
        self.family.nft()
    }

    fn addr_len(&self) -> u32 {
        match self.family {
            Family::Ipv4 => 4,
            Family::Ipv6 => 16,
        }
    }

    /// `saddr` or `daddr`: its offset in the network header.
    fn addr_offset(&self, which: &str) -> Result<u32, String> {
        Ok(match (self.family, which) {
            (Family::Ipv4, "saddr") => 12,
            (Family::Ipv4, "daddr") => 16,
            (Family::Ipv6, "saddr") => 8,
            (Family::Ipv6, "daddr") => 24,
            _ => return Err(format!("no field {which:?}")),
        })
    }

    fn rule(&mut self) -> Result<(), String> {
        while let Some(w) = self.peek() {
            match w {
                "ct" => self.ct()?,
                "meta" if self.words.get(self.at + 2) == Some(&".") => self.concat_lookup()?,
                "meta" => self.meta()?,
                "fib" => self.fib()?,
                "numgen" => self.numgen_vmap()?,
                "update" => self.update()?,
                "masquerade" => {
                    self.next()?;
                    self.expect("fully-random")?;
                    self.out.push(Expr::Masq { flags: 0x10 });
                }
                "reject" => self.reject()?,
                "dnat" => return Err("a dnat without its protocol".into()),
                w if w == self.f() => self.field_match()?,
                _ => {
                    self.verdict()?;
                    if self.peek().is_some() {
                        return Err("words after the verdict".into());
                    }
                }
            }
        }
        Ok(())
    }

    fn verdict(&mut self) -> Result<(), String> {
        let (code, chain) = match self.next()? {
            "accept" => (1, None),
            "drop" => (0, None),
            "return" => (-5i32 as u32, None),
            "jump" => (-3i32 as u32, Some(self.next()?.to_owned())),
            "goto" => (-4i32 as u32, Some(self.next()?.to_owned())),
            other => return Err(format!("not a verdict: {other:?}")),
        };
        self.out.push(Expr::Verdict { code, chain });
        Ok(())
    }

    /// `ct state new`, `ct status dnat`.
    fn ct(&mut self) -> Result<(), String> {
        self.expect("ct")?;
        let (key, bit) = match (self.next()?, self.next()?) {
            ("state", "new") => (CT_STATE, 0x8u32),
            ("status", "dnat") => (CT_STATUS, 0x20u32),
            (k, v) => return Err(format!("ct {k} {v}")),
        };
        self.out.push(Expr::Ct { key, dreg: REG_1 });
        self.out.push(Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: bit.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
            op: false,
        });
        self.out.push(Expr::Cmp {
            sreg: REG_1,
            op: NEQ,
            data: vec![0; 4],
        });
        Ok(())
    }

    /// `meta mark set meta mark | X`, `… ^ X`, `meta mark & X == Y`,
    /// `meta l4proto P` (then a dnat, a reject or more).
    fn meta(&mut self) -> Result<(), String> {
        self.expect("meta")?;
        match self.next()? {
            "mark" => {
                self.out.push(Expr::Meta {
                    key: META_MARK,
                    dreg: REG_1,
                });
                if self.eat("set") {
                    self.expect("meta")?;
                    self.expect("mark")?;
                    let op = self.next()?;
                    let v = hex_u32(self.next()?)?;
                    let (mask, xor) = match op {
                        "|" => (!v, v),
                        "^" => (u32::MAX, v),
                        _ => return Err(format!("meta mark set … {op}")),
                    };
                    self.out.push(Expr::Bitwise {
                        sreg: REG_1,
                        dreg: REG_1,
                        mask: mask.to_ne_bytes().to_vec(),
                        xor: xor.to_ne_bytes().to_vec(),
                        op: true,
                    });
                    self.out.push(Expr::MetaSet {
                        key: META_MARK,
                        sreg: REG_1,
                    });
                } else {
                    self.expect("&")?;
                    let mask = hex_u32(self.next()?)?;
                    self.expect("==")?;
                    let v = hex_u32(self.next()?)?;
                    self.out.push(Expr::Bitwise {
                        sreg: REG_1,
                        dreg: REG_1,
                        mask: mask.to_ne_bytes().to_vec(),
                        xor: vec![0; 4],
                        // An explicit `&`: nft names the operation.
                        op: true,
                    });
                    self.out.push(Expr::Cmp {
                        sreg: REG_1,
                        op: EQ,
                        data: v.to_ne_bytes().to_vec(),
                    });
                }
            }
            "l4proto" => {
                let p = self.next()?;
                let n = proto_number(p).ok_or_else(|| format!("meta l4proto {p}"))?;
                self.out.push(Expr::Meta {
                    key: META_L4PROTO,
                    dreg: REG_1,
                });
                self.out.push(Expr::Cmp {
                    sreg: REG_1,
                    op: EQ,
                    data: vec![n],
                });
                if self.peek() == Some("dnat") {
                    self.dnat(p)?;
                } else if self.eat("reject") {
                    self.expect("with")?;
                    self.expect("tcp")?;
                    self.expect("reset")?;
                    self.out.push(Expr::Reject { type_: 1, code: 0 });
                }
            }
            other => return Err(format!("meta {other}")),
        }
        Ok(())
    }

    /// `reject` (an ICMP port unreachable).
    fn reject(&mut self) -> Result<(), String> {
        self.expect("reject")?;
        let code = match self.family {
            Family::Ipv4 => 3,
            Family::Ipv6 => 4,
        };
        self.out.push(Expr::Reject { type_: 0, code });
        Ok(())
    }

    /// `fib daddr type local`, `fib saddr type local`.
    fn fib(&mut self) -> Result<(), String> {
        self.expect("fib")?;
        let flags = match self.next()? {
            "saddr" => 1,
            "daddr" => 2,
            w => return Err(format!("fib {w}")),
        };
        self.expect("type")?;
        self.expect("local")?;
        self.out.push(Expr::Fib { flags, dreg: REG_1 });
        self.out.push(Expr::Cmp {
            sreg: REG_1,
            op: EQ,
            data: 2u32.to_ne_bytes().to_vec(),
        });
        Ok(())
    }

    /// The fields of a concatenation (`ip daddr . meta l4proto . th
    /// dport . ip saddr`), loaded from `NFT_REG_1` on; for an interval
    /// set, the protocol in network order. Returns the words it took.
    fn concat(&mut self, interval: bool, base: usize) -> Result<(), String> {
        let mut offset = base;
        loop {
            let reg = reg_at(offset);
            match self.next()? {
                w if w == self.f() => {
                    let which = self.next()?;
                    let off = self.addr_offset(which)?;
                    self.out.push(Expr::Payload {
                        base: NETWORK,
                        offset: off,
                        len: self.addr_len(),
                        dreg: reg,
                    });
                    offset += self.addr_len() as usize;
                }
                "meta" => {
                    self.expect("l4proto")?;
                    self.out.push(Expr::Meta {
                        key: META_L4PROTO,
                        dreg: reg,
                    });
                    if interval {
                        // The protocol as 2 bytes in network order.
                        self.out.push(Expr::Hton {
                            sreg: reg,
                            dreg: reg,
                            size: 2,
                            len: 1,
                        });
                    }
                    offset += 4;
                }
                "th" | "tcp" | "udp" | "sctp" => {
                    self.expect("dport")?;
                    self.out.push(Expr::Payload {
                        base: TRANSPORT,
                        offset: 2,
                        len: 2,
                        dreg: reg,
                    });
                    offset += 4;
                }
                w => return Err(format!("no field {w:?} in a concatenation")),
            }
            if !self.eat(".") {
                return Ok(());
            }
        }
    }

    /// A concatenation looked up in a set, or a verdict map.
    fn concat_lookup(&mut self) -> Result<(), String> {
        let start = self.at;
        // Against an interval set, which nft's `!=` lookups here are.
        let interval = self.words[start..]
            .iter()
            .position(|w| w.starts_with('@') || *w == "!=")
            .is_some_and(|i| self.words[start + i] == "!=");
        self.concat(interval, 0)?;
        let inv = self.eat("!=");
        let vmap = self.eat("vmap");
        let set = self.next()?.strip_prefix('@').ok_or("expected a set")?;
        self.out.push(Expr::Lookup {
            sreg: REG_1,
            set: set.to_owned(),
            dreg: vmap.then_some(0),
            inv,
        });
        Ok(())
    }

    /// A match on the addresses: `ip daddr @set`, `ip saddr != NET`,
    /// `ip daddr NET`, or a concatenation looked up in a set or map.
    fn field_match(&mut self) -> Result<(), String> {
        if self.words.get(self.at + 2) == Some(&".") {
            return self.concat_lookup();
        }
        self.next()?;
        let which = self.next()?;
        let offset = self.addr_offset(which)?;
        let inv = self.eat("!=");
        let what = self.next()?;
        self.out.push(Expr::Payload {
            base: NETWORK,
            offset,
            len: self.addr_len(),
            dreg: REG_1,
        });
        if let Some(set) = what.strip_prefix('@') {
            self.out.push(Expr::Lookup {
                sreg: REG_1,
                set: set.to_owned(),
                dreg: None,
                inv,
            });
            return Ok(());
        }
        // A prefix: the bytes it covers (the last one masked).
        let net: ipnet::IpNet = what
            .parse()
            .or_else(|_| what.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("not an address or prefix: {what:?}"))?;
        let bytes = match net.network() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let plen = usize::from(net.prefix_len());
        // Whole bytes are compared as they are; a partial one is masked,
        // over whole 4-byte words (as nft does).
        let n = if plen.is_multiple_of(8) {
            plen / 8
        } else {
            plen.div_ceil(8).next_multiple_of(4).min(bytes.len())
        };
        if let Some(Expr::Payload { len, .. }) = self.out.last_mut() {
            *len = n as u32;
        }
        if !plen.is_multiple_of(8) {
            let mut mask = vec![0u8; n];
            for (i, b) in mask.iter_mut().enumerate() {
                let bits = plen.saturating_sub(i * 8).min(8);
                *b = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
            }
            self.out.push(Expr::Bitwise {
                sreg: REG_1,
                dreg: REG_1,
                mask,
                xor: vec![0; n],
                op: false,
            });
        }
        self.out.push(Expr::Cmp {
            sreg: REG_1,
            op: if inv { NEQ } else { EQ },
            data: bytes[..n].to_vec(),
        });
        Ok(())
    }

    /// `dnat ip to ADDR:PORT`, or `dnat ip to KEY . numgen random mod N
    /// [offset O] map @BACKENDS : KEY map @PORTS`.
    fn dnat(&mut self, proto: &str) -> Result<(), String> {
        self.expect("dnat")?;
        let f = self.f();
        self.expect(f)?;
        self.expect("to")?;
        let family = match self.family {
            Family::Ipv4 => 2,
            Family::Ipv6 => 10,
        };
        let target = self.peek().ok_or("dnat to nothing")?;
        if let Ok(sa) = target.parse::<std::net::SocketAddr>() {
            self.next()?;
            let addr = match sa.ip() {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            self.out.push(Expr::Value {
                dreg: REG_1,
                data: addr,
            });
            self.out.push(Expr::Value {
                dreg: 2,
                data: sa.port().to_be_bytes().to_vec(),
            });
            self.out.push(Expr::Dnat {
                family,
                addr: REG_1,
                proto: 2,
            });
            return Ok(());
        }
        // The backends' key: [daddr .] dport . numgen.
        let with_addr = target == f;
        let mut offset = 0usize;
        let key_fields = |p: &mut Self, base: usize| -> Result<usize, String> {
            let mut o = base;
            if p.eat(f) {
                p.expect("daddr")?;
                let off = p.addr_offset("daddr")?;
                p.out.push(Expr::Payload {
                    base: NETWORK,
                    offset: off,
                    len: p.addr_len(),
                    dreg: reg_at(o),
                });
                o += p.addr_len() as usize;
                p.expect(".")?;
            }
            p.expect(proto)?;
            p.expect("dport")?;
            p.out.push(Expr::Payload {
                base: TRANSPORT,
                offset: 2,
                len: 2,
                dreg: reg_at(o),
            });
            Ok(o + 4)
        };
        offset = key_fields(self, offset)?;
        self.expect(".")?;
        self.expect("numgen")?;
        self.expect("random")?;
        self.expect("mod")?;
        let modulus: u32 = self.next()?.parse().map_err(|_| "bad modulus")?;
        let mut numgen_offset = 0;
        if self.eat("offset") {
            numgen_offset = self.next()?.parse().map_err(|_| "bad offset")?;
        }
        self.out.push(Expr::Numgen {
            dreg: reg_at(offset),
            modulus,
            offset: numgen_offset,
        });
        self.expect("map")?;
        let backends = self.next()?.strip_prefix('@').ok_or("expected a map")?;
        self.out.push(Expr::Lookup {
            sreg: REG_1,
            set: backends.to_owned(),
            dreg: Some(REG_1),
            inv: false,
        });
        self.expect(":")?;
        // The ports' key, after the address the first lookup gave.
        let _ = with_addr;
        key_fields(self, 16)?;
        self.expect("map")?;
        let ports = self.next()?.strip_prefix('@').ok_or("expected a map")?;
        self.out.push(Expr::Lookup {
            sreg: 2,
            set: ports.to_owned(),
            dreg: Some(2),
            inv: false,
        });
        self.out.push(Expr::Dnat {
            family,
            addr: REG_1,
            proto: 2,
        });
        Ok(())
    }

    /// `numgen random mod N vmap { 0 : goto a, 1 : goto b }`: the
    /// anonymous map is declared by the caller ([`anonymous_vmap`]).
    fn numgen_vmap(&mut self) -> Result<(), String> {
        self.expect("numgen")?;
        self.expect("random")?;
        self.expect("mod")?;
        let modulus: u32 = self.next()?.parse().map_err(|_| "bad modulus")?;
        self.expect("vmap")?;
        while self.next()? != "}" {}
        self.out.push(Expr::Numgen {
            dreg: REG_1,
            modulus,
            offset: 0,
        });
        self.out.push(Expr::Lookup {
            sreg: REG_1,
            set: ANONYMOUS_VMAP.to_owned(),
            dreg: Some(0),
            inv: false,
        });
        Ok(())
    }

    /// `update @set { ip saddr }`.
    fn update(&mut self) -> Result<(), String> {
        self.expect("update")?;
        let set = self.next()?.strip_prefix('@').ok_or("expected a set")?;
        self.expect("{")?;
        let f = self.f();
        self.expect(f)?;
        self.expect("saddr")?;
        self.expect("}")?;
        let off = self.addr_offset("saddr")?;
        self.out.push(Expr::Payload {
            base: NETWORK,
            offset: off,
            len: self.addr_len(),
            dreg: REG_1,
        });
        self.out.push(Expr::Update {
            sreg: REG_1,
            set: set.to_owned(),
        });
        Ok(())
    }
}

/// The name nft gives an anonymous map (the kernel numbers it).
pub const ANONYMOUS_VMAP: &str = "__map%d";

/// The elements of the anonymous map of `numgen random mod N vmap { … }`:
/// (slot, verdict).
pub fn anonymous_vmap(rule: &str) -> Option<Vec<(u32, String)>> {
    let inner = rule.split_once(" vmap { ")?.1.strip_suffix(" }")?;
    inner
        .split(", ")
        .map(|arm| {
            let (slot, verdict) = arm.split_once(" : ")?;
            Some((slot.parse().ok()?, verdict.to_owned()))
        })
        .collect()
}
