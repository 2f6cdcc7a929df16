//! A bounded cache of forwarded answers that honours their TTLs: positive
//! answers for the smallest TTL of their records, negative ones (NXDOMAIN,
//! NODATA) for the SOA's negative TTL (RFC 2308), both capped. Entries are
//! the upstream's response bytes with the offsets of their TTLs, so a hit
//! is a copy with the ID, question and TTLs patched.
//!
//! Sharded LRU maps behind short mutexes: a lookup locks one shard for a
//! hash-map probe.

use crate::request::Parsed;
use crate::wire::{self, HEADER_LEN, rcode, rtype};
use lru::LruCache;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// One cached response.
#[derive(Debug)]
pub(crate) struct Entry {
    bytes: Box<[u8]>,
    question_end: usize,
    /// Offsets of the TTL fields (OPT excluded) and the TTLs as received.
    ttls: Box<[(u32, u32)]>,
    /// Byte range of the OPT record, if any.
    opt: Option<(usize, usize)>,
    stored: Instant,
    expires: Instant,
}

impl Entry {
    /// Analyses an upstream response to the question `name`/`qtype`/
    /// `qclass`; `None` when it is malformed, for another question, or
    /// must not be kept (truncated, an error, no TTL to honour).
    pub(crate) fn new(
        resp: &[u8],
        name: &[u8],
        qtype: u16,
        qclass: u16,
        now: Instant,
        limits: (Duration, Duration),
    ) -> Option<(Entry, bool)> {
        if resp.len() < HEADER_LEN || resp[2] & 0x80 == 0 {
            return None;
        }
        let truncated = resp[2] & 0x02 != 0;
        let rc = u16::from(resp[3] & 0x0F);
        let count = |i: usize| u16::from_be_bytes([resp[4 + 2 * i], resp[5 + 2 * i]]) as usize;
        if count(0) != 1 {
            return None;
        }
        // The question must be ours, uncompressed at offset 12.
        let qend = HEADER_LEN + name.len();
        let q = resp.get(HEADER_LEN..qend + 4)?;
        if !q[..name.len()].eq_ignore_ascii_case(name)
            || q[name.len()..]
                != [
                    (qtype >> 8) as u8,
                    qtype as u8,
                    (qclass >> 8) as u8,
                    qclass as u8,
                ]
        {
            return None;
        }
        let mut pos = qend + 4;
        let mut ttls = Vec::new();
        let mut opt = None;
        let mut min_answer = u32::MAX;
        let mut negative: Option<u32> = None;
        for section in 1..4 {
            for _ in 0..count(section) {
                let start = pos;
                let name_end = skip_name(resp, pos)?;
                let fixed = resp.get(name_end..name_end + 10)?;
                let t = u16::from_be_bytes([fixed[0], fixed[1]]);
                let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
                let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
                let end = name_end + 10 + rdlen;
                if end > resp.len() {
                    return None;
                }
                if t == rtype::OPT {
                    opt = Some((start, end));
                } else {
                    ttls.push(((name_end + 4) as u32, ttl));
                    if section == 1 {
                        min_answer = min_answer.min(ttl);
                    }
                    if section == 2 && t == rtype::SOA && rdlen >= 20 {
                        let minimum = u32::from_be_bytes([
                            resp[end - 4],
                            resp[end - 3],
                            resp[end - 2],
                            resp[end - 1],
                        ]);
                        negative = Some(ttl.min(minimum));
                    }
                }
                pos = end;
            }
        }
        let (max, max_negative) = limits;
        let ttl = match (rc, count(1)) {
            _ if truncated => 0,
            (rcode::NOERROR, n) if n > 0 => min_answer.min(max.as_secs() as u32),
            (rcode::NOERROR | rcode::NXDOMAIN, _) => {
                negative.unwrap_or(0).min(max_negative.as_secs() as u32)
            }
            _ => 0,
        };
        let entry = Entry {
            bytes: resp[..pos].into(),
            question_end: qend + 4,
            ttls: ttls.into(),
            opt,
            stored: now,
            expires: now + Duration::from_secs(u64::from(ttl)),
        };
        Some((entry, ttl > 0))
    }

    /// The upstream's response as stored, with the TTLs less the time
    /// since it was stored.
    pub(crate) fn aged(&self, now: Instant) -> Vec<u8> {
        let elapsed = now.saturating_duration_since(self.stored).as_secs() as u32;
        let mut out = self.bytes.to_vec();
        for &(off, ttl) in self.ttls.iter() {
            let off = off as usize;
            out[off..off + 4].copy_from_slice(&ttl.saturating_sub(elapsed).to_be_bytes());
        }
        out
    }

    /// The rcode of the response.
    pub(crate) fn rcode(&self) -> u16 {
        u16::from(self.bytes[3] & 0x0F)
    }

    /// Writes the response to `req` (parsed as `p`) from this entry: the
    /// request's ID, RD bit and question, TTLs less the time since it was
    /// stored, OPT only when the client sent one, and TC with no records
    /// when it does not fit.
    pub(crate) fn write(&self, req: &[u8], p: &Parsed, now: Instant, out: &mut Vec<u8>) {
        out.clear();
        let elapsed = now.saturating_duration_since(self.stored).as_secs() as u32;
        let (cut, cut_len) = match self.opt {
            Some((s, e)) if !p.edns => (s, e - s),
            _ => (usize::MAX, 0),
        };
        if cut == usize::MAX {
            out.extend_from_slice(&self.bytes);
        } else {
            out.extend_from_slice(&self.bytes[..cut]);
            out.extend_from_slice(&self.bytes[cut + cut_len..]);
            let ar = u16::from_be_bytes([out[10], out[11]]).saturating_sub(1);
            out[10..12].copy_from_slice(&ar.to_be_bytes());
        }
        out[0] = req[0];
        out[1] = req[1];
        out[2] = (out[2] & !0x01) | (req[2] & 0x01);
        let q = self.question_end.min(p.question_end);
        out[HEADER_LEN..q].copy_from_slice(&req[HEADER_LEN..q]);
        for &(off, ttl) in self.ttls.iter() {
            let mut off = off as usize;
            if off > cut {
                off -= cut_len;
            }
            out[off..off + 4].copy_from_slice(&ttl.saturating_sub(elapsed).to_be_bytes());
        }
        if out.len() > p.max_size {
            out.truncate(self.question_end);
            out[2] |= 0x02;
            out[6..12].fill(0);
            if p.edns {
                wire::push_opt(out, p.max_size as u16, self.rcode(), p.dnssec_ok);
                out[11] = 1;
            }
        }
    }
}

/// Skips a (possibly compressed) name; the position after it.
fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *msg.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            l if l & 0xC0 == 0xC0 => {
                msg.get(pos + 1)?;
                return Some(pos + 2);
            }
            l if l & 0xC0 == 0 => pos += 1 + l as usize,
            _ => return None,
        }
    }
}

type Shard = Mutex<LruCache<Box<[u8]>, Arc<Entry>>>;

/// The cache. See the module documentation.
pub(crate) struct Cache {
    shards: Box<[Shard]>,
    hasher: foldhash::fast::FixedState,
    max_ttl: Duration,
    max_negative_ttl: Duration,
    /// The time source (expiry and TTL decay).
    clock: crate::Clock,
}

/// The cache key: name (lowercase wire), type, class and the DO bit.
fn key(
    buf: &mut [u8; wire::MAX_NAME + 5],
    name: &[u8],
    qtype: u16,
    qclass: u16,
    dnssec_ok: bool,
) -> usize {
    let n = name.len().min(wire::MAX_NAME);
    buf[..n].copy_from_slice(&name[..n]);
    buf[n..n + 2].copy_from_slice(&qtype.to_be_bytes());
    buf[n + 2..n + 4].copy_from_slice(&qclass.to_be_bytes());
    buf[n + 4] = u8::from(dnssec_ok);
    n + 5
}

impl Cache {
    /// A cache of at most `capacity` entries (at least one per shard).
    pub(crate) fn new(
        capacity: usize,
        max_ttl: Duration,
        max_negative_ttl: Duration,
        clock: crate::Clock,
    ) -> Self {
        let per = NonZeroUsize::new(capacity.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
        Cache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per)))
                .collect(),
            hasher: foldhash::fast::FixedState::default(),
            max_ttl,
            max_negative_ttl,
            clock,
        }
    }

    /// The time by the cache's clock.
    pub(crate) fn now(&self) -> Instant {
        (self.clock)()
    }

    fn shard(&self, key: &[u8]) -> &Shard {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    /// A live entry for the question.
    pub(crate) fn get(
        &self,
        name: &[u8],
        qtype: u16,
        qclass: u16,
        dnssec_ok: bool,
        now: Instant,
    ) -> Option<Arc<Entry>> {
        let mut buf = [0u8; wire::MAX_NAME + 5];
        let n = key(&mut buf, name, qtype, qclass, dnssec_ok);
        let k = &buf[..n];
        let mut shard = self.shard(k).lock().ok()?;
        let entry = shard.get(k)?;
        if entry.expires <= now {
            shard.pop(k);
            return None;
        }
        Some(entry.clone())
    }

    /// Answers `req` from the cache; false on a miss.
    pub(crate) fn answer(&self, req: &[u8], p: &Parsed, out: &mut Vec<u8>) -> bool {
        let now = self.now();
        match self.get(p.qname.wire(), p.qtype, p.qclass, p.dnssec_ok, now) {
            Some(e) => {
                e.write(req, p, now, out);
                true
            }
            None => false,
        }
    }

    /// Analyses an upstream response and keeps it when it may be cached.
    pub(crate) fn insert(
        &self,
        resp: &[u8],
        name: &[u8],
        qtype: u16,
        qclass: u16,
        dnssec_ok: bool,
    ) -> Option<Arc<Entry>> {
        let now = self.now();
        let (entry, keep) = Entry::new(
            resp,
            name,
            qtype,
            qclass,
            now,
            (self.max_ttl, self.max_negative_ttl),
        )?;
        let entry = Arc::new(entry);
        if keep {
            let mut buf = [0u8; wire::MAX_NAME + 5];
            let n = key(&mut buf, name, qtype, qclass, dnssec_ok);
            let k = &buf[..n];
            if let Ok(mut shard) = self.shard(k).lock() {
                shard.put(k.into(), entry.clone());
            }
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::{Transport, parse};
    use hickory_proto::op::{Edns, Message, Query, ResponseCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn request(edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("Db.Corp.Example.").unwrap(),
            RecordType::A,
        ));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    fn upstream(answers: usize, rcode: ResponseCode, ttl: u32) -> Vec<u8> {
        let name = Name::from_ascii("db.corp.example.").unwrap();
        let mut m = Message::response(7, hickory_proto::op::OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(Query::query(name.clone(), RecordType::A));
        for i in 0..answers {
            m.add_answer(Record::from_rdata(
                name.clone(),
                ttl,
                RData::A(A::new(192, 168, 56, i as u8)),
            ));
        }
        if answers == 0 {
            let zone = Name::from_ascii("corp.example.").unwrap();
            m.add_authority(Record::from_rdata(
                zone.clone(),
                ttl,
                RData::SOA(SOA::new(zone.clone(), zone, 1, 1, 1, 1, 2)),
            ));
        }
        m.set_edns(Edns::new());
        m.to_vec().unwrap()
    }

    fn name() -> Vec<u8> {
        crate::wire::name_from_text("db.corp.example").unwrap()
    }

    const LIMITS: (Duration, Duration) = (Duration::from_secs(3600), Duration::from_secs(1800));

    #[test]
    fn ttls_decay_and_the_request_shapes_the_answer() {
        let now = Instant::now();
        let (e, keep) = Entry::new(
            &upstream(2, ResponseCode::NoError, 30),
            &name(),
            1,
            1,
            now,
            LIMITS,
        )
        .unwrap();
        assert!(keep);
        for edns in [true, false] {
            let req = request(edns);
            let mut out = Vec::new();
            let p = parse(&req, Transport::Udp, 1232, &mut out).ok().unwrap();
            e.write(&req, &p, now + Duration::from_secs(10), &mut out);
            let m = Message::from_vec(&out).unwrap();
            assert_eq!(m.metadata.id, u16::from_be_bytes([req[0], req[1]]));
            assert_eq!(m.queries[0].name().to_string(), "Db.Corp.Example.");
            assert_eq!(m.answers.len(), 2);
            assert!(m.answers.iter().all(|r| r.ttl == 20));
            assert_eq!(m.edns.is_some(), edns, "OPT only for EDNS clients");
        }
    }

    #[test]
    fn negative_answers_keep_the_soa_ttl_and_errors_are_not_kept() {
        let now = Instant::now();
        let (e, keep) = Entry::new(
            &upstream(0, ResponseCode::NXDomain, 30),
            &name(),
            1,
            1,
            now,
            LIMITS,
        )
        .unwrap();
        assert!(keep);
        // min(SOA TTL 30, SOA minimum 2)
        assert_eq!(e.expires - now, Duration::from_secs(2));
        let (_, keep) = Entry::new(
            &upstream(0, ResponseCode::ServFail, 30),
            &name(),
            1,
            1,
            now,
            LIMITS,
        )
        .unwrap();
        assert!(!keep);
        // An answer to another question is refused.
        assert!(
            Entry::new(
                &upstream(1, ResponseCode::NoError, 30),
                &name(),
                28,
                1,
                now,
                LIMITS
            )
            .is_none()
        );
    }

    #[test]
    fn an_answer_too_large_for_the_client_is_truncated() {
        let now = Instant::now();
        let (e, _) = Entry::new(
            &upstream(60, ResponseCode::NoError, 30),
            &name(),
            1,
            1,
            now,
            LIMITS,
        )
        .unwrap();
        let req = request(false);
        let mut out = Vec::new();
        let p = parse(&req, Transport::Udp, 1232, &mut out).ok().unwrap();
        e.write(&req, &p, now, &mut out);
        assert!(out.len() <= 512);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = Cache::new(32, LIMITS.0, LIMITS.1, Arc::new(Instant::now));
        let resp = upstream(1, ResponseCode::NoError, 30);
        for t in 0..500u16 {
            // Same name, many types: only the newest stay.
            let mut r = resp.clone();
            let q = HEADER_LEN + name().len();
            r[q..q + 2].copy_from_slice(&t.to_be_bytes());
            c.insert(&r, &name(), t, 1, false);
        }
        let held: usize = c.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 32 + SHARDS, "{held}");
        assert!(c.get(&name(), 499, 1, false, Instant::now()).is_some());
    }
}
