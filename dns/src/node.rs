//! A name of the zone and its record sets, encoded in one buffer.

use crate::wire::rtype;

/// The records of one type at one name: the records (each owned by
/// [`Owner::Question`]) and the records for the additional section (SRV
/// targets' addresses, with full owner names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rrset<'a> {
    /// Record type.
    pub(crate) rtype: u16,
    /// Number of records.
    pub(crate) count: u16,
    /// Number of additional records.
    pub(crate) extra_count: u16,
    records: &'a [u8],
    extra: &'a [u8],
}

impl<'a> Rrset<'a> {
    pub(crate) fn new(
        rtype: u16,
        count: u16,
        records: &'a [u8],
        extra_count: u16,
        extra: &'a [u8],
    ) -> Self {
        Rrset {
            rtype,
            count,
            extra_count,
            records,
            extra,
        }
    }

    /// The records.
    pub(crate) fn records(&self) -> &'a [u8] {
        self.records
    }

    /// The additional records.
    pub(crate) fn extra(&self) -> &'a [u8] {
        self.extra
    }
}

/// Bytes of one record set's header in a node.
const SET_HEADER: usize = 14;

/// A name in the zone and its record sets, encoded in one buffer (one
/// allocation per name): a count, a header per set (type, count,
/// additional count, lengths), then the bytes. No sets: an empty
/// non-terminal, or a name that exists without data of any type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Node {
    blob: Box<[u8]>,
}

impl Node {
    pub(crate) fn new(sets: &[Rrset<'_>]) -> Node {
        if sets.is_empty() {
            return Node::default();
        }
        let n = sets.len().min(255);
        let data: usize = sets[..n]
            .iter()
            .map(|s| s.records.len() + s.extra.len())
            .sum();
        let mut blob = Vec::with_capacity(1 + n * SET_HEADER + data);
        blob.push(n as u8);
        for s in &sets[..n] {
            blob.extend_from_slice(&s.rtype.to_be_bytes());
            blob.extend_from_slice(&s.count.to_be_bytes());
            blob.extend_from_slice(&s.extra_count.to_be_bytes());
            blob.extend_from_slice(&(s.records.len() as u32).to_be_bytes());
            blob.extend_from_slice(&(s.extra.len() as u32).to_be_bytes());
        }
        for s in &sets[..n] {
            blob.extend_from_slice(s.records);
            blob.extend_from_slice(s.extra);
        }
        Node { blob: blob.into() }
    }

    /// A view of this node.
    pub(crate) fn view(&self) -> NodeRef<'_> {
        NodeRef(&self.blob)
    }

    /// The encoded node.
    pub(crate) fn blob(&self) -> &[u8] {
        &self.blob
    }
}

/// A node as stored: its encoded record sets (see [`Node`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeRef<'a>(pub(crate) &'a [u8]);

impl<'a> NodeRef<'a> {
    /// The record sets, in order.
    pub(crate) fn rrsets(self) -> impl Iterator<Item = Rrset<'a>> {
        let b = self.0;
        let n = b.first().copied().unwrap_or(0) as usize;
        let mut at = 1 + n * SET_HEADER;
        (0..n).map(move |i| {
            let h = &b[1 + i * SET_HEADER..1 + (i + 1) * SET_HEADER];
            let u16_at = |o: usize| u16::from_be_bytes([h[o], h[o + 1]]);
            let u32_at =
                |o: usize| u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]) as usize;
            let (rl, el) = (u32_at(6), u32_at(10));
            let set = Rrset {
                rtype: u16_at(0),
                count: u16_at(2),
                extra_count: u16_at(4),
                records: &b[at..at + rl],
                extra: &b[at + rl..at + rl + el],
            };
            at += rl + el;
            set
        })
    }

    pub(crate) fn rrset(self, rtype: u16) -> Option<Rrset<'a>> {
        self.rrsets().find(|r| r.rtype == rtype)
    }

    /// The target of this name's CNAME (lowercase wire), to chase.
    pub(crate) fn cname(self) -> Option<&'a [u8]> {
        // Owner pointer, type, class, TTL, length: 12 bytes, then the target.
        self.rrset(rtype::CNAME).and_then(|s| s.records.get(12..))
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0.is_empty()
    }
}
