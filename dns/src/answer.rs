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
pub(crate) use crate::request::{Forward, Outcome, Parsed, Transport, Writer, parse};
use crate::wire::{self, QName, rcode, rtype};
use std::net::IpAddr;

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

/// NXDOMAIN or NODATA, with the SOA. Before the first sync a name that is
/// not there may yet come: SERVFAIL (with the SOA, as CoreDNS), never
/// NXDOMAIN; the names already known are answered.
fn negative(
    metrics: &DnsMetrics,
    mut w: Writer<'_>,
    snap: &Snapshot,
    rc: u16,
    p: &Parsed,
) -> Outcome {
    w.push(1, &snap.zone.soa_authority, 1);
    if rc == rcode::NXDOMAIN && !snap.synced {
        return reply(metrics, w, rcode::SERVFAIL, false, p);
    }
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
        // `pod.<zone>` itself exists (NODATA), as in CoreDNS.
        return Some(if rel == 1 {
            rcode::NOERROR
        } else {
            rcode::NXDOMAIN
        });
    }
    let verified = mode == PodsMode::Verified;
    // A namespace that does not exist has no pod names (CoreDNS's
    // namespaceExposed), in either mode.
    Some(match rel {
        1 => rcode::NOERROR,
        2 => {
            let ns = p.qname.label(0);
            let exists = if verified {
                snap.has_pod_namespace(ns) || snap.namespaces.contains(ns)
            } else {
                snap.namespace_exposed(ns)
            };
            if exists {
                rcode::NOERROR
            } else {
                rcode::NXDOMAIN
            }
        }
        3 => {
            let Some(ip) = wire::pod_label_ip(p.qname.label(0)) else {
                return Some(rcode::NXDOMAIN);
            };
            if !snap.namespace_exposed(p.qname.label(1)) {
                return Some(rcode::NXDOMAIN);
            }
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
mod hostile;
#[cfg(test)]
mod tests;
