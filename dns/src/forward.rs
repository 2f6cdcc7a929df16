//! Names outside the cluster zone: forwarded to the stub domain's servers
//! (longest matching domain) or to the upstreams, in order, all within the
//! upstream timeout; a truncated UDP answer is asked again over TCP. Answers go
//! through the cache. When every server fails or times out the client gets
//! SERVFAIL, never silence.

use crate::answer::{self, Forward, Parsed, Transport, Writer};
use crate::cache::{Cache, Entry};
use crate::config::StubDomain;
use crate::metrics::DnsMetrics;
use crate::wire::{self, HEADER_LEN, rcode};
use hickory_proto::op::Message;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The EDNS payload we ask upstreams for.
const UPSTREAM_PAYLOAD: u16 = 1232;

struct Stub {
    suffix: Vec<u8>,
    labels: usize,
    servers: Vec<SocketAddr>,
}

/// Why an upstream gave no usable answer (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    NoUpstream,
    Timeout,
    Network,
    Malformed,
    ServFail,
}

impl Failure {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Failure::NoUpstream => "no_upstream",
            Failure::Timeout => "timeout",
            Failure::Network => "network",
            Failure::Malformed => "malformed",
            Failure::ServFail => "servfail",
        }
    }
}

/// The forwarder. See the module documentation.
pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    stubs: Vec<Stub>,
    timeout: Duration,
    cache: Option<Arc<Cache>>,
    metrics: DnsMetrics,
    max_udp: u16,
    clock: crate::Clock,
}

impl Forwarder {
    pub(crate) fn new(
        upstreams: Vec<SocketAddr>,
        stub_domains: &[StubDomain],
        timeout: Duration,
        cache: Option<Arc<Cache>>,
        metrics: DnsMetrics,
        max_udp: u16,
        clock: crate::Clock,
    ) -> Self {
        let mut stubs: Vec<Stub> = stub_domains
            .iter()
            .filter_map(|s| {
                let suffix = wire::name_from_text(&s.domain)?;
                Some(Stub {
                    labels: wire::count_labels(&suffix),
                    suffix,
                    servers: s.servers.clone(),
                })
            })
            .collect();
        // Longest domain first, so the first match is the most specific.
        stubs.sort_by_key(|s| std::cmp::Reverse(s.labels));
        Forwarder {
            upstreams,
            stubs,
            timeout,
            cache,
            metrics,
            max_udp,
            clock,
        }
    }

    fn servers_for(&self, name: &[u8]) -> &[SocketAddr] {
        let labels = wire::count_labels(name);
        for s in &self.stubs {
            if labels >= s.labels
                && name.ends_with(&s.suffix)
                && wire::label_boundary(name, s.suffix.len())
            {
                return &s.servers;
            }
        }
        &self.upstreams
    }

    /// The response to `req`, which the answerer decided to forward.
    pub(crate) async fn respond(&self, req: &[u8], transport: Transport, fwd: Forward) -> Vec<u8> {
        let started = Instant::now();
        let mut out = Vec::with_capacity(512);
        let p = match answer::parse(req, transport, self.max_udp, &mut out) {
            Ok(p) => p,
            Err(_) => return out,
        };
        match fwd {
            Forward::Query => {
                let name = p.qname.wire().to_vec();
                let question = &req[HEADER_LEN..p.question_end];
                match self.resolve(&name, question, p.qtype, p.qclass, &p).await {
                    Ok(entry) => entry.write(req, &p, (self.clock)(), &mut out),
                    Err(f) => self.fail(req, &p, f, &mut out),
                }
            }
            Forward::Chase { target, answers } => {
                let mut question = target.clone();
                question.extend_from_slice(&p.qtype.to_be_bytes());
                question.extend_from_slice(&p.qclass.to_be_bytes());
                match self
                    .resolve(&target, &question, p.qtype, p.qclass, &p)
                    .await
                {
                    Ok(entry) => {
                        chase_response(req, &p, &answers, &entry, (self.clock)(), &mut out)
                    }
                    Err(f) => self.fail(req, &p, f, &mut out),
                }
            }
        }
        self.metrics.query(p.qtype, answer::response_rcode(&out));
        self.metrics.observe_latency(started.elapsed(), 1);
        out
    }

    fn fail(&self, req: &[u8], p: &Parsed, f: Failure, out: &mut Vec<u8>) {
        self.metrics.upstream_error(f.label());
        Writer::start(out, req, p).finish(rcode::SERVFAIL, false);
    }

    /// The answer for a question, from the cache or the servers.
    async fn resolve(
        &self,
        name: &[u8],
        question: &[u8],
        qtype: u16,
        qclass: u16,
        p: &Parsed,
    ) -> Result<Arc<Entry>, Failure> {
        if let Some(cache) = &self.cache
            && let Some(e) = cache.get(name, qtype, qclass, p.dnssec_ok, (self.clock)())
        {
            return Ok(e);
        }
        let servers = self.servers_for(name);
        if servers.is_empty() {
            return Err(Failure::NoUpstream);
        }
        let mut last = Failure::NoUpstream;
        // All servers share one budget: each gets an equal part of what is
        // left, so one that fails fast leaves its time to the next.
        let deadline = tokio::time::Instant::now() + self.timeout;
        for (i, server) in servers.iter().enumerate() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let until = tokio::time::Instant::now() + left / (servers.len() - i) as u32;
            match self.exchange(*server, question, p.dnssec_ok, until).await {
                Ok(resp) => {
                    let entry = match &self.cache {
                        Some(c) => c.insert(&resp, name, qtype, qclass, p.dnssec_ok),
                        None => Entry::new(
                            &resp,
                            name,
                            qtype,
                            qclass,
                            (self.clock)(),
                            (Duration::ZERO, Duration::ZERO),
                        )
                        .map(|(e, _)| Arc::new(e)),
                    };
                    let Some(entry) = entry else {
                        self.metrics.upstream_error(Failure::Malformed.label());
                        last = Failure::Malformed;
                        continue;
                    };
                    if matches!(entry.rcode(), rcode::SERVFAIL | rcode::REFUSED) {
                        self.metrics.upstream_error(Failure::ServFail.label());
                        last = Failure::ServFail;
                        continue;
                    }
                    return Ok(entry);
                }
                Err(f) => {
                    self.metrics.upstream_error(f.label());
                    last = f;
                }
            }
        }
        Err(last)
    }

    /// One exchange with one server: UDP, then TCP when truncated.
    async fn exchange(
        &self,
        server: SocketAddr,
        question: &[u8],
        dnssec_ok: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<u8>, Failure> {
        let id: u16 = rand::random();
        let mut query = Vec::with_capacity(HEADER_LEN + question.len() + 11);
        query.extend_from_slice(&id.to_be_bytes());
        query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
        query.extend_from_slice(question);
        wire::push_opt(&mut query, UPSTREAM_PAYLOAD, 0, dnssec_ok);
        let resp = tokio::time::timeout_at(deadline, udp_exchange(server, &query, question))
            .await
            .map_err(|_| Failure::Timeout)??;
        if resp[2] & 0x02 == 0 {
            return Ok(resp);
        }
        tokio::time::timeout_at(deadline, tcp_exchange(server, &query, question))
            .await
            .map_err(|_| Failure::Timeout)?
    }
}

/// Whether `resp` answers `query` (same ID, a response, same question).
fn matches(query: &[u8], question: &[u8], resp: &[u8]) -> bool {
    resp.len() >= HEADER_LEN + question.len()
        && resp[..2] == query[..2]
        && resp[2] & 0x80 != 0
        && resp[HEADER_LEN..HEADER_LEN + question.len()].eq_ignore_ascii_case(question)
}

async fn udp_exchange(
    server: SocketAddr,
    query: &[u8],
    question: &[u8],
) -> Result<Vec<u8>, Failure> {
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(|_| Failure::Network)?;
    sock.connect(server).await.map_err(|_| Failure::Network)?;
    sock.send(query).await.map_err(|_| Failure::Network)?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|_| Failure::Network)?;
        if matches(query, question, &buf[..n]) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(
    server: SocketAddr,
    query: &[u8],
    question: &[u8],
) -> Result<Vec<u8>, Failure> {
    let mut s = TcpStream::connect(server)
        .await
        .map_err(|_| Failure::Network)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    s.write_all(&framed).await.map_err(|_| Failure::Network)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.map_err(|_| Failure::Network)?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.map_err(|_| Failure::Network)?;
    if matches(query, question, &buf) {
        Ok(buf)
    } else {
        Err(Failure::Malformed)
    }
}

/// The answer to a question whose name is an in-zone CNAME to an outside
/// name: the CNAME records, then the outside answer's records, with its
/// rcode (RFC 6604: the rcode of the last name of the chain).
fn chase_response(
    req: &[u8],
    p: &Parsed,
    answers: &(Vec<u8>, u16),
    entry: &Entry,
    now: Instant,
    out: &mut Vec<u8>,
) {
    let upstream = Message::from_vec(&entry.aged(now)).ok();
    let mut records = Vec::new();
    let mut count = 0u16;
    if let Some(m) = &upstream {
        for r in &m.answers {
            let mut one = Vec::new();
            let mut enc = BinEncoder::new(&mut one);
            enc.set_name_encoding(NameEncoding::Uncompressed);
            if r.emit(&mut enc).is_ok() {
                records.extend_from_slice(&one);
                count += 1;
            }
        }
    }
    let rc = upstream.as_ref().map_or(rcode::SERVFAIL, |_| entry.rcode());
    let mut w = Writer::start(out, req, p);
    w.push(0, &answers.0, answers.1);
    w.push(0, &records, count);
    w.finish(rc, true);
}
