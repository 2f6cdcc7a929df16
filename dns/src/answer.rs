//! From request bytes to response bytes: the one code path that UDP and TCP
//! share. Names in the cluster zone (and PTR names of known addresses) are
//! answered from the snapshot without allocating; other names are answered
//! from the cache or handed to the forwarder.
//!
//! ```text
//!  request ─> parse (hickory-proto) ─┬─ malformed ──────────────> FORMERR
//!                                    ├─ in zone ─> snapshot ────> answer / NODATA / NXDOMAIN (+SOA)
//!                                    ├─ PTR of a known address ─> answer
//!                                    └─ other ─> cache ─ hit ───> answer
//!                                                      └ miss ──> Outcome::Forward
//! ```

use crate::cache::Cache;
use crate::config::PodsMode;
use crate::index::{Node, NodeRef, Snapshot};
use crate::metrics::DnsMetrics;
use crate::wire::{self, HEADER_LEN, Owner, QName, rcode, rtype};
use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use std::net::IpAddr;

/// How a request arrived: decides the size limit of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The response is in the output buffer.
    Reply,
    /// Resolve upstream; the forwarder builds the response.
    Forward(Forward),
    /// Send nothing (a response, or not even a header).
    Drop,
}

/// What the forwarder must resolve.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Forward {
    /// The question itself.
    Query,
    /// The target of an in-zone CNAME (an ExternalName Service) whose
    /// records the answer must carry after the CNAME.
    Chase {
        /// The CNAME target (lowercase wire).
        target: Vec<u8>,
        /// The answer records so far (the CNAME chain) and their count.
        answers: (Vec<u8>, u16),
    },
}

/// A request that parsed.
#[derive(Clone)]
pub(crate) struct Parsed {
    pub(crate) qname: QName,
    pub(crate) qtype: u16,
    pub(crate) qclass: u16,
    /// End of the question section in the request.
    pub(crate) question_end: usize,
    /// The request carried an OPT record.
    pub(crate) edns: bool,
    pub(crate) dnssec_ok: bool,
    /// Largest response the client takes.
    pub(crate) max_size: usize,
}

/// Parses a request, or writes the error answer for it into `out`.
pub(crate) fn parse(
    req: &[u8],
    transport: Transport,
    max_udp: u16,
    out: &mut Vec<u8>,
) -> Result<Parsed, Outcome> {
    if req.len() < HEADER_LEN || req[2] & 0x80 != 0 {
        return Err(Outcome::Drop);
    }
    let formerr = |out: &mut Vec<u8>| {
        wire::error_only(req, rcode::FORMERR, out);
        Outcome::Reply
    };
    let mut d = BinDecoder::new(req);
    let Ok(header) = Header::read(&mut d) else {
        return Err(Outcome::Drop);
    };
    if header.metadata.message_type != MessageType::Query {
        return Err(Outcome::Drop);
    }
    if header.metadata.op_code != OpCode::Query {
        wire::error_only(req, rcode::NOTIMP, out);
        return Err(Outcome::Reply);
    }
    let counts = header.counts;
    if counts.queries != 1 {
        return Err(formerr(out));
    }
    let Some(qname) = QName::read(req) else {
        return Err(formerr(out));
    };
    let qend = HEADER_LEN + qname.wire_len();
    let (Some(t), Some(c)) = (req.get(qend..qend + 2), req.get(qend + 2..qend + 4)) else {
        return Err(formerr(out));
    };
    // The rest: usually nothing or one OPT record, which hickory-proto
    // reads after the question; anything else goes through its full parse.
    let edns: Option<Edns> = if counts.answers == 0 && counts.authorities == 0 {
        if counts.additionals == 0 {
            None
        } else {
            let mut d = BinDecoder::new(req);
            let read = d.read_slice(qend + 4).map_err(drop).and_then(|_| {
                Message::read_records(&mut d, counts.additionals as usize, true, OpCode::Query)
                    .map_err(drop)
            });
            match read {
                Ok((_, edns, _)) => edns,
                Err(()) => return Err(formerr(out)),
            }
        }
    } else {
        match Message::from_vec(req) {
            Ok(m) => m.edns,
            Err(_) => return Err(formerr(out)),
        }
    };
    let mut p = Parsed {
        qtype: u16::from_be_bytes([t[0], t[1]]),
        qclass: u16::from_be_bytes([c[0], c[1]]),
        question_end: qend + 4,
        qname,
        edns: edns.is_some(),
        dnssec_ok: edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        max_size: 512,
    };
    p.max_size = match transport {
        Transport::Tcp => u16::MAX as usize,
        Transport::Udp => edns
            .as_ref()
            .map_or(512, |e| e.max_payload().clamp(512, max_udp) as usize),
    };
    if edns.as_ref().is_some_and(|e| e.version() != 0) {
        Writer::start(out, req, &p).finish(rcode::BADVERS, false);
        return Err(Outcome::Reply);
    }
    Ok(p)
}

/// A response being written: header, the request's question, then the
/// sections in order; [`Writer::finish`] truncates, adds OPT and writes
/// the header.
pub(crate) struct Writer<'a> {
    out: &'a mut Vec<u8>,
    req: &'a [u8],
    p: &'a Parsed,
    counts: [u16; 3],
    section: usize,
    ends: [usize; 3],
}

impl<'a> Writer<'a> {
    pub(crate) fn start(out: &'a mut Vec<u8>, req: &'a [u8], p: &'a Parsed) -> Self {
        out.clear();
        out.extend_from_slice(&req[..p.question_end]);
        let q = out.len();
        Writer {
            out,
            req,
            p,
            counts: [0; 3],
            section: 0,
            ends: [q; 3],
        }
    }

    /// Appends `count` records in `bytes` to `section` (0 answer, 1
    /// authority, 2 additional); sections must come in order.
    pub(crate) fn push(&mut self, section: usize, bytes: &[u8], count: u16) {
        debug_assert!(section >= self.section);
        self.section = section;
        self.out.extend_from_slice(bytes);
        self.counts[section] = self.counts[section].saturating_add(count);
        for e in &mut self.ends[section..] {
            *e = self.out.len();
        }
    }

    /// Appends one record owned by the question.
    pub(crate) fn push_record(&mut self, section: usize, rtype: u16, ttl: u32, rdata: &[u8]) {
        debug_assert!(section >= self.section);
        self.section = section;
        wire::push_rr(self.out, Owner::Question, rtype, ttl, rdata);
        self.counts[section] = self.counts[section].saturating_add(1);
        for e in &mut self.ends[section..] {
            *e = self.out.len();
        }
    }

    /// The answer section written so far, and its count.
    pub(crate) fn answer_bytes(&self) -> (Vec<u8>, u16) {
        (
            self.out[self.p.question_end..self.ends[0]].to_vec(),
            self.counts[0],
        )
    }

    pub(crate) fn answers(&self) -> u16 {
        self.counts[0]
    }

    /// Finishes the response: when it is too large, the additional section
    /// goes first; when it still does not fit, only the question is sent,
    /// with TC set.
    pub(crate) fn finish(self, rcode: u16, aa: bool) {
        let opt = if self.p.edns { 11 } else { 0 };
        let q = self.p.question_end;
        let mut counts = self.counts;
        let mut tc = false;
        if self.out.len() + opt > self.p.max_size {
            self.out.truncate(self.ends[1]);
            counts[2] = 0;
            if self.out.len() + opt > self.p.max_size {
                self.out.truncate(q);
                counts = [0; 3];
                tc = true;
            }
        }
        if self.p.edns {
            wire::push_opt(self.out, self.p.max_size as u16, rcode, self.p.dnssec_ok);
            counts[2] += 1;
        }
        wire::write_header(
            self.out,
            self.req,
            aa,
            tc,
            rcode,
            [1, counts[0], counts[1], counts[2]],
        );
    }
}

/// Answers what can be answered at once. See the module documentation.
pub(crate) fn answer(
    snap: &Snapshot,
    cache: Option<&Cache>,
    metrics: &DnsMetrics,
    req: &[u8],
    transport: Transport,
    max_udp: u16,
    out: &mut Vec<u8>,
) -> Outcome {
    let p = match parse(req, transport, max_udp, out) {
        Ok(p) => p,
        Err(outcome) => {
            if outcome == Outcome::Reply {
                metrics.query(0, response_rcode(out));
            }
            return outcome;
        }
    };
    let zone = &snap.zone;
    if p.qclass != wire::CLASS_IN && p.qclass != wire::CLASS_ANY {
        if p.qname.under(&zone.apex, zone.apex_labels).is_some() {
            return reply(
                metrics,
                Writer::start(out, req, &p),
                rcode::REFUSED,
                false,
                &p,
            );
        }
    } else if let Some(rel) = p.qname.under(&zone.apex, zone.apex_labels) {
        return zone_answer(snap, metrics, req, &p, rel, out);
    } else if p.qtype == rtype::PTR
        && snap.synced
        && let Some(node) = reverse_lookup(snap, &p.qname)
    {
        let mut w = Writer::start(out, req, &p);
        if let Some(set) = node.view().rrset(rtype::PTR) {
            w.push(0, set.records(), set.count);
        }
        return reply(metrics, w, rcode::NOERROR, true, &p);
    }
    if let Some(cache) = cache
        && cache.answer(req, &p, out)
    {
        metrics.cache_hit();
        metrics.query(p.qtype, response_rcode(out));
        return Outcome::Reply;
    }
    if cache.is_some() {
        metrics.cache_miss();
    }
    Outcome::Forward(Forward::Query)
}

fn reply(metrics: &DnsMetrics, w: Writer<'_>, rc: u16, aa: bool, p: &Parsed) -> Outcome {
    w.finish(rc, aa);
    metrics.query(p.qtype, rc);
    Outcome::Reply
}

/// The rcode of an encoded response (low bits only).
pub(crate) fn response_rcode(out: &[u8]) -> u16 {
    out.get(3).map_or(rcode::SERVFAIL, |b| u16::from(b & 0x0F))
}

fn zone_answer(
    snap: &Snapshot,
    metrics: &DnsMetrics,
    req: &[u8],
    p: &Parsed,
    rel: usize,
    out: &mut Vec<u8>,
) -> Outcome {
    let mut w = Writer::start(out, req, p);
    if !snap.synced {
        return reply(metrics, w, rcode::SERVFAIL, false, p);
    }
    if matches!(p.qtype, rtype::AXFR | rtype::IXFR) {
        return reply(metrics, w, rcode::REFUSED, false, p);
    }
    if let Some(entry) = snap.names.get(p.qname.wire()) {
        return node_answer(snap, metrics, w, p, entry.node());
    }
    if let Some(rc) = pod_answer(snap, &mut w, p, rel) {
        if rc == rcode::NOERROR && w.answers() > 0 {
            return reply(metrics, w, rc, true, p);
        }
        return negative(metrics, w, snap, rc, p);
    }
    negative(metrics, w, snap, rcode::NXDOMAIN, p)
}

fn negative(
    metrics: &DnsMetrics,
    mut w: Writer<'_>,
    snap: &Snapshot,
    rc: u16,
    p: &Parsed,
) -> Outcome {
    w.push(1, &snap.zone.soa_authority, 1);
    reply(metrics, w, rc, true, p)
}

/// Longest CNAME chain followed inside the zone.
const MAX_CHASE: usize = 8;

fn node_answer(
    snap: &Snapshot,
    metrics: &DnsMetrics,
    mut w: Writer<'_>,
    p: &Parsed,
    node: NodeRef<'_>,
) -> Outcome {
    if let Some(target) = node.cname()
        && p.qtype != rtype::CNAME
        && p.qtype != rtype::ANY
    {
        if let Some(set) = node.rrset(rtype::CNAME) {
            w.push(0, set.records(), set.count);
        }
        return chase(snap, metrics, w, p, target);
    }
    let mut extra: [Option<(&[u8], u16)>; 8] = [None; 8];
    let mut n_extra = 0;
    for set in node.rrsets() {
        if set.rtype == p.qtype || p.qtype == rtype::ANY {
            w.push(0, set.records(), set.count);
            if set.extra_count > 0 && n_extra < extra.len() {
                extra[n_extra] = Some((set.extra(), set.extra_count));
                n_extra += 1;
            }
        }
    }
    if w.answers() == 0 {
        return negative(metrics, w, snap, rcode::NOERROR, p);
    }
    for (bytes, count) in extra.iter().flatten() {
        w.push(2, bytes, *count);
    }
    reply(metrics, w, rcode::NOERROR, true, p)
}

/// Follows a CNAME: inside the zone from the snapshot, outside through
/// the forwarder.
fn chase(
    snap: &Snapshot,
    metrics: &DnsMetrics,
    mut w: Writer<'_>,
    p: &Parsed,
    first: &[u8],
) -> Outcome {
    let zone = &snap.zone;
    let mut target: &[u8] = first;
    let mut owned = Vec::new();
    for _ in 0..MAX_CHASE {
        let in_zone = target.len() >= zone.apex.len()
            && target.ends_with(&zone.apex)
            && (target.len() == zone.apex.len() || wire::label_boundary(target, zone.apex.len()));
        if !in_zone {
            return Outcome::Forward(Forward::Chase {
                target: target.to_vec(),
                answers: w.answer_bytes(),
            });
        }
        let Some(entry) = snap.names.get(target) else {
            return negative(metrics, w, snap, rcode::NXDOMAIN, p);
        };
        let node = entry.node();
        owned.clear();
        let mut count = 0;
        let next = node.cname().filter(|_| p.qtype != rtype::CNAME);
        for set in node.rrsets() {
            if set.rtype == p.qtype || (next.is_some() && set.rtype == rtype::CNAME) {
                count += wire::reown(set.records(), target, &mut owned);
            }
        }
        w.push(0, &owned, count);
        match next {
            Some(n) => target = n,
            None if count == 0 => return negative(metrics, w, snap, rcode::NOERROR, p),
            None => return reply(metrics, w, rcode::NOERROR, true, p),
        }
    }
    reply(metrics, w, rcode::SERVFAIL, false, p)
}

/// Pod names: `<ip>.<ns>.pod.<zone>`, `<ns>.pod.<zone>`, `pod.<zone>`.
/// `None` when the name is not under `pod.<zone>`.
fn pod_answer(snap: &Snapshot, w: &mut Writer<'_>, p: &Parsed, rel: usize) -> Option<u16> {
    if rel == 0 || p.qname.label(rel - 1) != b"pod" {
        return None;
    }
    let mode = snap.zone.pods;
    if mode == PodsMode::Disabled {
        return Some(rcode::NXDOMAIN);
    }
    let verified = mode == PodsMode::Verified;
    Some(match rel {
        1 => rcode::NOERROR,
        2 => {
            if !verified || snap.has_pod_namespace(p.qname.label(0)) {
                rcode::NOERROR
            } else {
                rcode::NXDOMAIN
            }
        }
        3 => {
            let Some(ip) = wire::pod_label_ip(p.qname.label(0)) else {
                return Some(rcode::NXDOMAIN);
            };
            if verified && !snap.has_pod(p.qname.label(1), ip) {
                return Some(rcode::NXDOMAIN);
            }
            let (t, rdata) = wire::address_rdata(ip);
            if p.qtype == t || p.qtype == rtype::ANY {
                w.push_record(0, t, snap.zone.ttl, &rdata);
            }
            rcode::NOERROR
        }
        _ => rcode::NXDOMAIN,
    })
}

fn reverse_lookup<'s>(snap: &'s Snapshot, q: &QName) -> Option<&'s Node> {
    const V4: &[u8] = b"\x07in-addr\x04arpa\x00";
    const V6: &[u8] = b"\x03ip6\x04arpa\x00";
    let ip: IpAddr = if q.under(V4, 2) == Some(4) {
        let l = [q.label(0), q.label(1), q.label(2), q.label(3)];
        wire::reverse_v4(&l)?
    } else if q.under(V6, 2) == Some(32) {
        let l: Vec<&[u8]> = (0..32).map(|i| q.label(i)).collect();
        wire::reverse_v6(&l)?
    } else {
        return None;
    };
    snap.ptrs.get(&ip)
}

#[cfg(test)]
mod tests;
