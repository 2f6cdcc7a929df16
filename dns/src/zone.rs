//! The zone every snapshot shares: its apex, SOA and name server.

use crate::config::PodsMode;
use crate::wire::{self, Owner, rtype};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// What every snapshot of one server shares: the zone, its SOA and its
/// name server.
#[derive(Debug)]
pub(crate) struct Zone {
    /// The apex in wire form.
    pub(crate) apex: Vec<u8>,
    /// Labels of the apex.
    pub(crate) apex_labels: usize,
    /// TTL of every record.
    pub(crate) ttl: u32,
    /// Pod records.
    pub(crate) pods: PodsMode,
    /// The SOA record owned by the apex (authority section of negative
    /// answers).
    pub(crate) soa_authority: Vec<u8>,
    /// The SOA record owned by the question (the apex's SOA set).
    pub(crate) soa_answer: Vec<u8>,
    /// The zone's name server `ns.dns.<zone>` (wire): the SOA's MNAME and
    /// the apex NS record's target.
    pub(crate) ns_name: Vec<u8>,
    /// The name server's addresses (the DNS Service's), without duplicates.
    pub(crate) ns_ips: Vec<IpAddr>,
}

impl Zone {
    /// The zone `apex` (text) with `ttl`, pod mode and the addresses of
    /// its name server.
    pub(crate) fn new(apex: &str, ttl: u32, pods: PodsMode, ns_ips: &[IpAddr]) -> Option<Zone> {
        let apex = wire::name_from_text(apex)?;
        let ns_name = wire::name_under(&["ns", "dns"], &apex)?;
        let rname = wire::name_under(&["hostmaster"], &apex)?;
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        let rdata = wire::soa_rdata(&ns_name, &rname, serial, ttl);
        // The SOA's own TTL is the zone's, at most 300 s; its minimum
        // field (the negative TTL) stays the zone's, as CoreDNS writes it.
        let soa_ttl = ttl.min(MAX_SOA_TTL);
        let mut soa_authority = Vec::new();
        wire::push_rr(
            &mut soa_authority,
            Owner::Name(&apex),
            rtype::SOA,
            soa_ttl,
            &rdata,
        );
        let mut soa_answer = Vec::new();
        wire::push_rr(
            &mut soa_answer,
            Owner::Question,
            rtype::SOA,
            soa_ttl,
            &rdata,
        );
        let mut unique = Vec::with_capacity(ns_ips.len());
        for ip in ns_ips {
            if !unique.contains(ip) {
                unique.push(*ip);
            }
        }
        Some(Zone {
            apex_labels: wire::count_labels(&apex),
            apex,
            ttl,
            pods,
            soa_authority,
            soa_answer,
            ns_name,
            ns_ips: unique,
        })
    }

    /// The name server's address records of type `t` (A or AAAA), owned by
    /// the question, and their count.
    pub(crate) fn ns_addresses(&self, t: u16) -> (Vec<u8>, u16) {
        let mut records = Vec::new();
        let mut count = 0;
        for ip in &self.ns_ips {
            let (rt, rdata) = wire::address_rdata(*ip);
            if rt == t && count < u16::MAX {
                wire::push_rr(&mut records, Owner::Question, rt, self.ttl, &rdata);
                count += 1;
            }
        }
        (records, count)
    }
}

/// The longest TTL of the zone's SOA record.
const MAX_SOA_TTL: u32 = 300;
