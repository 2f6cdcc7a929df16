//! DNS wire format helpers for the hot path: names as lowercase wire bytes,
//! pre-encoded resource records, the question of a request, and response
//! headers. Requests are validated by hickory-proto first; these helpers
//! only read what it has accepted and write what we answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Record types we answer (RFC 1035, 3596, 2782, 6891).
pub(crate) mod rtype {
    pub(crate) const A: u16 = 1;
    pub(crate) const NS: u16 = 2;
    pub(crate) const CNAME: u16 = 5;
    pub(crate) const SOA: u16 = 6;
    pub(crate) const PTR: u16 = 12;
    pub(crate) const TXT: u16 = 16;
    pub(crate) const AAAA: u16 = 28;
    pub(crate) const SRV: u16 = 33;
    pub(crate) const OPT: u16 = 41;
    pub(crate) const IXFR: u16 = 251;
    pub(crate) const AXFR: u16 = 252;
    pub(crate) const ANY: u16 = 255;
}

/// Response codes (the low 4 bits go in the header, the rest in OPT).
pub(crate) mod rcode {
    pub(crate) const NOERROR: u16 = 0;
    pub(crate) const FORMERR: u16 = 1;
    pub(crate) const SERVFAIL: u16 = 2;
    pub(crate) const NXDOMAIN: u16 = 3;
    pub(crate) const NOTIMP: u16 = 4;
    pub(crate) const REFUSED: u16 = 5;
    pub(crate) const BADVERS: u16 = 16;
}

/// Class IN.
pub(crate) const CLASS_IN: u16 = 1;
/// Class ANY (`*`).
pub(crate) const CLASS_ANY: u16 = 255;
/// Length of the DNS header.
pub(crate) const HEADER_LEN: usize = 12;

/// Whether the wire-format name `name` has a label
/// boundary `suffix_len` bytes from its end, i.e. ends in a whole-label
/// suffix of that length.
pub(crate) fn label_boundary(name: &[u8], suffix_len: usize) -> bool {
    let want = name.len() - suffix_len;
    let mut i = 0;
    while i < want {
        i += 1 + name[i] as usize;
    }
    i == want
}
/// A compression pointer to the question name (offset 12).
pub(crate) const QNAME_POINTER: [u8; 2] = [0xC0, 0x0C];
/// The longest name in wire form.
pub(crate) const MAX_NAME: usize = 255;

/// A name in lowercase wire form (`\x03svc\x07cluster\x05local\x00`) from
/// text, with or without the final dot. `None` for an invalid name (an
/// empty or too long label, too long a name).
pub(crate) fn name_from_text(text: &str) -> Option<Vec<u8>> {
    let text = text.strip_suffix('.').unwrap_or(text);
    let mut out = Vec::with_capacity(text.len() + 2);
    if !text.is_empty() {
        for label in text.split('.') {
            push_label(&mut out, label.as_bytes())?;
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME).then_some(out)
}

/// Appends one label (lowercased); `None` when it is empty or too long.
pub(crate) fn push_label(out: &mut Vec<u8>, label: &[u8]) -> Option<()> {
    if label.is_empty() || label.len() > 63 {
        return None;
    }
    out.push(label.len() as u8);
    out.extend(label.iter().map(u8::to_ascii_lowercase));
    Some(())
}

/// `labels` followed by the wire name `suffix`; `None` when a label is
/// invalid or the name too long.
pub(crate) fn name_under(labels: &[&str], suffix: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(suffix.len() + 64);
    for l in labels {
        push_label(&mut out, l.as_bytes())?;
    }
    out.extend_from_slice(suffix);
    (out.len() <= MAX_NAME).then_some(out)
}

/// The text form of a wire name, without the final dot (for tests).
#[cfg(test)]
pub(crate) fn name_to_text(name: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < name.len() && name[i] != 0 {
        let len = name[i] as usize;
        let end = (i + 1 + len).min(name.len());
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(&name[i + 1..end]));
        i = end;
    }
    out
}

/// The question name of a request, lowercased, with its label offsets.
#[derive(Clone)]
pub(crate) struct QName {
    buf: [u8; MAX_NAME],
    len: usize,
    starts: [u8; 128],
    labels: usize,
}

impl QName {
    /// Reads the first question's name at offset 12. `None` when it is
    /// compressed or malformed (hickory rejects those before we get here).
    pub(crate) fn read(msg: &[u8]) -> Option<QName> {
        let mut q = QName {
            buf: [0; MAX_NAME],
            len: 0,
            starts: [0; 128],
            labels: 0,
        };
        let mut i = HEADER_LEN;
        loop {
            let len = *msg.get(i)? as usize;
            if len == 0 {
                break;
            }
            if len > 63 || q.labels >= q.starts.len() {
                return None;
            }
            let label = msg.get(i + 1..i + 1 + len)?;
            if q.len + 1 + len + 1 > MAX_NAME {
                return None;
            }
            q.starts[q.labels] = q.len as u8;
            q.labels += 1;
            q.buf[q.len] = len as u8;
            for (d, s) in q.buf[q.len + 1..q.len + 1 + len].iter_mut().zip(label) {
                *d = s.to_ascii_lowercase();
            }
            q.len += 1 + len;
            i += 1 + len;
        }
        q.buf[q.len] = 0;
        q.len += 1;
        Some(q)
    }

    /// The whole name (wire, lowercase).
    pub(crate) fn wire(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Length of the name in the request (equal to the wire length).
    pub(crate) fn wire_len(&self) -> usize {
        self.len
    }

    /// Number of labels (the root counts none).
    #[cfg(test)]
    pub(crate) fn labels(&self) -> usize {
        self.labels
    }

    /// Label `i` (0 is the leftmost).
    pub(crate) fn label(&self, i: usize) -> &[u8] {
        let s = self.starts[i] as usize;
        let len = self.buf[s] as usize;
        &self.buf[s + 1..s + 1 + len]
    }

    /// The name from label `i` on (a suffix), in wire form.
    pub(crate) fn suffix(&self, i: usize) -> &[u8] {
        if i >= self.labels {
            return &self.buf[self.len - 1..self.len];
        }
        &self.buf[self.starts[i] as usize..self.len]
    }

    /// How many labels precede `suffix` when the name ends with it at a
    /// label boundary (`Some(0)`: the name is the suffix).
    pub(crate) fn under(&self, suffix: &[u8], suffix_labels: usize) -> Option<usize> {
        let n = self.labels.checked_sub(suffix_labels)?;
        (self.suffix(n) == suffix).then_some(n)
    }
}

/// Counts the labels of a wire name.
pub(crate) fn count_labels(name: &[u8]) -> usize {
    let mut i = 0;
    let mut n = 0;
    while i < name.len() && name[i] != 0 {
        n += 1;
        i += 1 + name[i] as usize;
    }
    n
}

/// The address of a reverse name's labels (`4.3.2.1` under in-addr.arpa,
/// 32 nibbles under ip6.arpa), leftmost label first.
pub(crate) fn reverse_v4(labels: &[&[u8]]) -> Option<IpAddr> {
    if labels.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (i, l) in labels.iter().enumerate() {
        let s = std::str::from_utf8(l).ok()?;
        if s.len() > 1 && s.starts_with('0') {
            return None;
        }
        octets[3 - i] = s.parse().ok()?;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// See [`reverse_v4`].
pub(crate) fn reverse_v6(labels: &[&[u8]]) -> Option<IpAddr> {
    if labels.len() != 32 {
        return None;
    }
    let mut bits: u128 = 0;
    for (i, l) in labels.iter().enumerate() {
        let [c] = l else { return None };
        let nibble = (*c as char).to_digit(16)? as u128;
        bits |= nibble << (4 * i);
    }
    Some(IpAddr::V6(Ipv6Addr::from(bits)))
}

/// The reverse name of an address (lowercase wire form).
#[cfg(test)]
pub(crate) fn reverse_name(ip: IpAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(74);
    match ip {
        IpAddr::V4(v4) => {
            for o in v4.octets().iter().rev() {
                let s = o.to_string();
                out.push(s.len() as u8);
                out.extend_from_slice(s.as_bytes());
            }
            out.extend_from_slice(b"\x07in-addr\x04arpa\x00");
        }
        IpAddr::V6(v6) => {
            for b in v6.octets().iter().rev() {
                for nibble in [b & 0xF, b >> 4] {
                    out.push(1);
                    out.push(b"0123456789abcdef"[nibble as usize]);
                }
            }
            out.extend_from_slice(b"\x03ip6\x04arpa\x00");
        }
    }
    out
}

/// The address a pod label names: `10-244-0-5` or `fd00-244--5`.
pub(crate) fn pod_label_ip(label: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(label).ok()?;
    if s.contains('.') || s.contains(':') {
        return None;
    }
    if let Ok(v4) = s.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    s.replace('-', ":").parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The generated name of an endpoint without a hostname: its address with
/// dashes (as CoreDNS does), `10-244-0-5` or `fd00-244--5`.
pub(crate) fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => {
            let mut s = v6.to_string().replace(':', "-");
            if s.ends_with('-') {
                s.push('0');
            }
            if s.starts_with('-') {
                s.insert(0, '0');
            }
            s
        }
    }
}

/// Where a record's owner name comes from.
#[derive(Clone, Copy)]
pub(crate) enum Owner<'a> {
    /// A pointer to the question name (offset 12).
    Question,
    /// A full wire name.
    Name(&'a [u8]),
}

/// Appends a resource record.
pub(crate) fn push_rr(out: &mut Vec<u8>, owner: Owner<'_>, rtype: u16, ttl: u32, rdata: &[u8]) {
    match owner {
        Owner::Question => out.extend_from_slice(&QNAME_POINTER),
        Owner::Name(n) => out.extend_from_slice(n),
    }
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// The rdata of an address record and its type.
pub(crate) fn address_rdata(ip: IpAddr) -> (u16, Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => (rtype::A, v4.octets().to_vec()),
        IpAddr::V6(v6) => (rtype::AAAA, v6.octets().to_vec()),
    }
}

/// SRV rdata (RFC 2782).
pub(crate) fn srv_rdata(priority: u16, weight: u16, port: u16, target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + target.len());
    out.extend_from_slice(&priority.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(target);
    out
}

/// SOA rdata.
pub(crate) fn soa_rdata(mname: &[u8], rname: &[u8], serial: u32, minimum: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(mname.len() + rname.len() + 20);
    out.extend_from_slice(mname);
    out.extend_from_slice(rname);
    for v in [serial, 7200, 1800, 86400, minimum] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// TXT rdata of one string.
pub(crate) fn txt_rdata(s: &str) -> Vec<u8> {
    let b = &s.as_bytes()[..s.len().min(255)];
    let mut out = Vec::with_capacity(b.len() + 1);
    out.push(b.len() as u8);
    out.extend_from_slice(b);
    out
}

/// Re-owns records encoded with [`Owner::Question`]: the same records
/// with `owner` written out (for a CNAME target's records).
pub(crate) fn reown(records: &[u8], owner: &[u8], out: &mut Vec<u8>) -> u16 {
    let mut i = 0;
    let mut n = 0;
    while i + 12 <= records.len() {
        let rdlen = u16::from_be_bytes([records[i + 10], records[i + 11]]) as usize;
        let end = (i + 12 + rdlen).min(records.len());
        out.extend_from_slice(owner);
        out.extend_from_slice(&records[i + 2..end]);
        i = end;
        n += 1;
    }
    n
}

/// The OPT record we answer with (RFC 6891): our payload size, the high
/// bits of the rcode, version 0, and the DO bit echoed.
pub(crate) fn push_opt(out: &mut Vec<u8>, payload: u16, rcode: u16, dnssec_ok: bool) {
    out.push(0);
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&payload.to_be_bytes());
    out.push((rcode >> 4) as u8);
    out.push(0);
    out.push(if dnssec_ok { 0x80 } else { 0 });
    out.push(0);
    out.extend_from_slice(&[0, 0]);
}

/// Writes the header of a response to `req` into `out[..12]`.
pub(crate) fn write_header(
    out: &mut [u8],
    req: &[u8],
    aa: bool,
    tc: bool,
    rcode: u16,
    counts: [u16; 4],
) {
    out[0] = req[0];
    out[1] = req[1];
    // QR, the request's opcode and RD; then RA and the request's CD.
    out[2] = 0x80 | (req[2] & 0x79) | if aa { 0x04 } else { 0 } | if tc { 0x02 } else { 0 };
    out[3] = 0x80 | (req[3] & 0x10) | (rcode & 0x0F) as u8;
    for (i, c) in counts.iter().enumerate() {
        out[4 + 2 * i..6 + 2 * i].copy_from_slice(&c.to_be_bytes());
    }
}

/// A minimal error response: the header of `req` with `rcode`, no
/// sections. Used when the request could not be parsed.
pub(crate) fn error_only(req: &[u8], rcode: u16, out: &mut Vec<u8>) {
    out.clear();
    out.resize(HEADER_LEN, 0);
    write_header(out, req, false, false, rcode, [0; 4]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_wire() {
        assert_eq!(
            name_from_text("My-Svc.Default.svc.cluster.local.").unwrap(),
            b"\x06my-svc\x07default\x03svc\x07cluster\x05local\x00"
        );
        assert_eq!(name_from_text(".").unwrap(), b"\x00");
        assert!(name_from_text("a..b").is_none());
        assert!(name_from_text(&"x".repeat(64)).is_none());
        assert_eq!(
            name_to_text(b"\x03svc\x07cluster\x05local\x00"),
            "svc.cluster.local"
        );
    }

    #[test]
    fn reverse_names_round_trip() {
        for ip in ["10.96.0.10", "fd00:96::a", "::1", "192.168.56.50"] {
            let ip: IpAddr = ip.parse().unwrap();
            let name = reverse_name(ip);
            let mut msg = vec![0u8; HEADER_LEN];
            msg.extend_from_slice(&name);
            let q = QName::read(&msg).unwrap();
            type Parse = fn(&[&[u8]]) -> Option<IpAddr>;
            let (n, parse): (usize, Parse) = if ip.is_ipv4() {
                (4, reverse_v4)
            } else {
                (32, reverse_v6)
            };
            let labels: Vec<&[u8]> = (0..n).map(|i| q.label(i)).collect();
            assert_eq!(parse(&labels), Some(ip));
        }
        assert_eq!(reverse_v4(&[b"01", b"0", b"0", b"10"]), None);
    }

    #[test]
    fn pod_labels_and_dashed_names() {
        assert_eq!(
            pod_label_ip(b"10-244-0-5"),
            Some("10.244.0.5".parse().unwrap())
        );
        assert_eq!(
            pod_label_ip(b"fd00-244--5"),
            Some("fd00:244::5".parse().unwrap())
        );
        assert_eq!(pod_label_ip(b"web"), None);
        assert_eq!(dashed("10.244.0.5".parse().unwrap()), "10-244-0-5");
        assert_eq!(dashed("fd00:244::".parse().unwrap()), "fd00-244--0");
        assert_eq!(dashed("::1".parse().unwrap()), "0--1");
    }

    #[test]
    fn qname_suffixes() {
        let mut msg = vec![0u8; HEADER_LEN];
        msg.extend_from_slice(b"\x03WeB\x07default\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01");
        let q = QName::read(&msg).unwrap();
        assert_eq!(q.labels(), 5);
        assert_eq!(q.label(0), b"web");
        let zone = name_from_text("cluster.local").unwrap();
        assert_eq!(q.under(&zone, 2), Some(3));
        assert_eq!(q.under(&name_from_text("local").unwrap(), 1), Some(4));
        assert_eq!(q.under(&name_from_text("other.local").unwrap(), 2), None);
    }
}
