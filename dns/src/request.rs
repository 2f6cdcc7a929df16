//! A request and its response on the wire: parsing the question (and
//! EDNS) once, and writing the response's sections in order.

use crate::wire::{self, HEADER_LEN, Owner, QName, rcode};
use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

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
