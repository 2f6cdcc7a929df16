//! IPv4 TCP segments by hand, for tests that need the kernel to see a
//! segment no socket would send: a sniffer of the segments that arrive in
//! a namespace, and a raw socket that sends forged ones, with the IPv4
//! and TCP checksums computed here.
//!
//! Both sockets belong to the namespace they are created in: create them
//! inside `lab::in_netns`, use them from anywhere.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// `IPPROTO_RAW`: a raw socket that sends whole IPv4 packets
/// (`IP_HDRINCL` implied) and receives nothing.
const IPPROTO_RAW: i32 = 255;

/// The length of the IPv4 header of forged packets.
pub const IP_HEADER: usize = 20;
const TCP_HEADER: usize = 20;

/// One TCP segment, without options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    /// `FIN`, `SYN`, `RST`, `PSH`, `ACK`, or'ed.
    pub flags: u8,
    pub window: u16,
    pub payload: Vec<u8>,
}

impl Segment {
    /// Whether every flag of `flags` is set.
    pub fn has(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }

    /// The segment of an IPv4 packet (`None`: not an IPv4 TCP packet, or
    /// a truncated one).
    pub fn parse(packet: &[u8]) -> Option<Segment> {
        let (&version_ihl, _) = packet.split_first()?;
        if version_ihl >> 4 != 4 || *packet.get(9)? != 6 {
            return None;
        }
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
        let ip = |at: usize| -> Option<Ipv4Addr> {
            Some(Ipv4Addr::from(
                <[u8; 4]>::try_from(packet.get(at..at + 4)?).ok()?,
            ))
        };
        let (src_ip, dst_ip) = (ip(12)?, ip(16)?);
        let tcp = packet.get(ihl..total.min(packet.len()))?;
        let u16_at = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes(tcp.get(at..at + 2)?.try_into().ok()?))
        };
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_be_bytes(tcp.get(at..at + 4)?.try_into().ok()?))
        };
        let data_offset = usize::from(*tcp.get(12)? >> 4) * 4;
        Some(Segment {
            src: SocketAddrV4::new(src_ip, u16_at(0)?),
            dst: SocketAddrV4::new(dst_ip, u16_at(2)?),
            seq: u32_at(4)?,
            ack: u32_at(8)?,
            flags: *tcp.get(13)?,
            window: u16_at(14)?,
            payload: tcp.get(data_offset..)?.to_vec(),
        })
    }

    /// The whole IPv4 packet: a 20-byte IP header (TTL 64, don't
    /// fragment), a 20-byte TCP header, the payload; both checksums set.
    pub fn to_packet(&self) -> Vec<u8> {
        let tcp_len = TCP_HEADER + self.payload.len();
        let total = u16::try_from(IP_HEADER + tcp_len).unwrap();
        let mut p = Vec::with_capacity(usize::from(total));
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]); // id, DF, TTL, TCP, checksum
        p.extend_from_slice(&self.src.ip().octets());
        p.extend_from_slice(&self.dst.ip().octets());
        let ip_sum = checksum(&[&p[..IP_HEADER]]);
        p[10..12].copy_from_slice(&ip_sum.to_be_bytes());

        let mut tcp = Vec::with_capacity(tcp_len);
        tcp.extend_from_slice(&self.src.port().to_be_bytes());
        tcp.extend_from_slice(&self.dst.port().to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.extend_from_slice(&[(TCP_HEADER as u8 / 4) << 4, self.flags]);
        tcp.extend_from_slice(&self.window.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(&self.payload);
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&self.src.ip().octets());
        pseudo.extend_from_slice(&self.dst.ip().octets());
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&u16::try_from(tcp_len).unwrap().to_be_bytes());
        let tcp_sum = checksum(&[&pseudo, &tcp]);
        tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
        p.extend_from_slice(&tcp);
        p
    }
}

/// The Internet checksum (RFC 1071) of the concatenated parts; each part
/// but the last must have an even length.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A copy of every IPv4 TCP segment that arrives in the namespace it was
/// created in (segments the namespace sends are not seen).
pub struct Sniffer(Socket);

impl Sniffer {
    /// Reads block for at most `timeout` (a guard against a test that
    /// waits forever, not a measure).
    pub fn new(timeout: Duration) -> io::Result<Sniffer> {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
        s.set_read_timeout(Some(timeout))?;
        Ok(Sniffer(s))
    }

    /// The next segment that arrives and satisfies `wanted`; the others
    /// are skipped. An error when nothing arrives within the timeout.
    pub fn next(&mut self, wanted: impl Fn(&Segment) -> bool) -> io::Result<Segment> {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = self.0.read(&mut buf)?;
            if let Some(seg) = Segment::parse(&buf[..n])
                && wanted(&seg)
            {
                return Ok(seg);
            }
        }
    }
}

/// Sends forged IPv4 packets from the namespace it was created in.
pub struct Injector(Socket);

impl Injector {
    pub fn new() -> io::Result<Injector> {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))?;
        Ok(Injector(s))
    }

    /// Sends `seg` as it is, routed by its destination.
    pub fn send(&self, seg: &Segment) -> io::Result<()> {
        let packet = seg.to_packet();
        let n = self.0.send_to(
            &packet,
            &SockAddr::from(SocketAddrV4::new(*seg.dst.ip(), 0)),
        )?;
        assert_eq!(n, packet.len());
        Ok(())
    }
}
