//! The bytes of nf_tables over netlink: message headers, attributes,
//! batches, and the kernel's answers (errors with their extended ack,
//! dump messages). Numbers from the kernel's uapi headers
//! (`linux/netlink.h`, `linux/netfilter/nfnetlink.h`,
//! `linux/netfilter/nf_tables.h`) and its netlink spec
//! (`Documentation/netlink/specs/nftables.yaml`).
//!
//! ```text
//!  nlmsghdr (16, host order) | nfgenmsg (family, version 0, res_id be16) | attributes
//!  attribute: len u16, type u16 (0x8000 = nested), value padded to 4; nf_tables integers are big-endian
//! ```

/// `NETLINK_NETFILTER`.
pub const NETLINK_NETFILTER: isize = 12;

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub const SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN`.
pub const BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
pub const BATCH_END: u16 = 0x11;

/// `NLMSG_ERROR` (an error, or an acknowledgement with error 0).
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub const NLMSG_DONE: u16 = 3;

/// `NLM_F_REQUEST`.
pub const F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`.
pub const F_ACK: u16 = 0x4;
/// `NLM_F_DUMP` (`ROOT | MATCH`).
pub const F_DUMP: u16 = 0x300;
/// `NLM_F_EXCL`.
pub const F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`.
pub const F_CREATE: u16 = 0x400;
/// `NLM_F_APPEND`.
pub const F_APPEND: u16 = 0x800;
/// `NLM_F_DUMP_INTR`: a dump that changed while it ran.
pub const F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_ACK_TLVS`: the error carries extended-ack attributes.
pub const F_ACK_TLVS: u16 = 0x200;
/// `NLM_F_CAPPED`: the error echoes only the request's header.
pub const F_CAPPED: u16 = 0x100;
/// `NLA_F_NESTED`.
pub const NESTED: u16 = 0x8000;

/// `NLMSGERR_ATTR_MSG`: a message from the kernel.
pub const ERR_ATTR_MSG: u16 = 1;
/// `NLMSGERR_ATTR_OFFS`: the offset of the attribute at fault, from the
/// start of the failing message.
pub const ERR_ATTR_OFFS: u16 = 2;

/// nf_tables message types (`NFT_MSG_*`).
#[allow(missing_docs)]
pub mod msg {
    pub const NEWTABLE: u16 = 0;
    pub const GETTABLE: u16 = 1;
    pub const DELTABLE: u16 = 2;
    pub const NEWCHAIN: u16 = 3;
    pub const GETCHAIN: u16 = 4;
    pub const DELCHAIN: u16 = 5;
    pub const NEWRULE: u16 = 6;
    pub const GETRULE: u16 = 7;
    pub const DELRULE: u16 = 8;
    pub const NEWSET: u16 = 9;
    pub const GETSET: u16 = 10;
    pub const DELSET: u16 = 11;
    pub const NEWSETELEM: u16 = 12;
    pub const GETSETELEM: u16 = 13;
    pub const DELSETELEM: u16 = 14;
}

/// Attribute numbers (`NFTA_*`).
#[allow(missing_docs)]
pub mod attr {
    pub const TABLE_NAME: u16 = 1;
    pub const TABLE_FLAGS: u16 = 2;
    pub const TABLE_USERDATA: u16 = 6;

    pub const CHAIN_TABLE: u16 = 1;
    pub const CHAIN_NAME: u16 = 3;
    pub const CHAIN_HOOK: u16 = 4;
    pub const CHAIN_POLICY: u16 = 5;
    pub const CHAIN_TYPE: u16 = 7;
    pub const HOOK_HOOKNUM: u16 = 1;
    pub const HOOK_PRIORITY: u16 = 2;

    pub const RULE_TABLE: u16 = 1;
    pub const RULE_CHAIN: u16 = 2;
    pub const RULE_EXPRESSIONS: u16 = 4;

    pub const SET_TABLE: u16 = 1;
    pub const SET_NAME: u16 = 2;
    pub const SET_FLAGS: u16 = 3;
    pub const SET_KEY_TYPE: u16 = 4;
    pub const SET_KEY_LEN: u16 = 5;
    pub const SET_DATA_TYPE: u16 = 6;
    pub const SET_DATA_LEN: u16 = 7;
    pub const SET_DESC: u16 = 9;
    pub const SET_ID: u16 = 10;
    pub const SET_TIMEOUT: u16 = 11;
    pub const SET_USERDATA: u16 = 13;
    pub const SET_DESC_SIZE: u16 = 1;
    pub const SET_DESC_CONCAT: u16 = 2;
    pub const SET_FIELD_LEN: u16 = 1;

    pub const SET_ELEM_LIST_TABLE: u16 = 1;
    pub const SET_ELEM_LIST_SET: u16 = 2;
    pub const SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const SET_ELEM_KEY: u16 = 1;
    pub const SET_ELEM_DATA: u16 = 2;
    pub const SET_ELEM_FLAGS: u16 = 3;
    pub const SET_ELEM_KEY_END: u16 = 10;

    pub const LIST_ELEM: u16 = 1;
    pub const DATA_VALUE: u16 = 1;
    pub const DATA_VERDICT: u16 = 2;
    pub const VERDICT_CODE: u16 = 1;
    pub const VERDICT_CHAIN: u16 = 2;
}

/// A netlink message under construction, appended to a buffer.
pub struct Message<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
    nests: Vec<usize>,
}

impl<'a> Message<'a> {
    /// Starts a message of `type_` with `flags` and `seq`, and its
    /// nfgenmsg header (`family`, `res_id`).
    pub fn start(
        buf: &'a mut Vec<u8>,
        type_: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> Message<'a> {
        let start = buf.len();
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&type_.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.push(family);
        buf.push(0);
        buf.extend_from_slice(&res_id.to_be_bytes());
        Message {
            buf,
            start,
            nests: Vec::new(),
        }
    }

    /// An attribute with raw bytes.
    pub fn bytes(&mut self, type_: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.buf
            .extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.buf.extend_from_slice(&type_.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
        self
    }

    /// A NUL-terminated string attribute.
    pub fn str(&mut self, type_: u16, value: &str) -> &mut Self {
        let mut v = Vec::with_capacity(value.len() + 1);
        v.extend_from_slice(value.as_bytes());
        v.push(0);
        self.bytes(type_, &v)
    }

    /// A big-endian u32 attribute.
    pub fn u32(&mut self, type_: u16, value: u32) -> &mut Self {
        self.bytes(type_, &value.to_be_bytes())
    }

    /// A big-endian u64 attribute.
    pub fn u64(&mut self, type_: u16, value: u64) -> &mut Self {
        self.bytes(type_, &value.to_be_bytes())
    }

    /// Opens a nested attribute; [`Message::end`] closes it.
    pub fn nest(&mut self, type_: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(type_ | NESTED).to_ne_bytes());
        self
    }

    /// Closes the innermost nested attribute.
    pub fn end(&mut self) -> &mut Self {
        if let Some(at) = self.nests.pop() {
            let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

impl Drop for Message<'_> {
    /// Writes the message's length into its header.
    fn drop(&mut self) {
        while !self.nests.is_empty() {
            self.end();
        }
        let len = u32::try_from(self.buf.len() - self.start).unwrap_or(u32::MAX);
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One message the kernel sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received<'a> {
    /// `nlmsg_type`.
    pub type_: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`: the request it answers.
    pub seq: u32,
    /// What follows the 16-byte header.
    pub payload: &'a [u8],
}

/// Splits a buffer of messages.
pub fn messages(mut buf: &[u8]) -> Result<Vec<Received<'_>>, String> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().map_err(|_| "short header")?) as usize;
        if len < 16 || len > buf.len() {
            return Err(format!("a message of {len} bytes in {} left", buf.len()));
        }
        out.push(Received {
            type_: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[16..len],
        });
        let aligned = len.next_multiple_of(4).min(buf.len());
        buf = &buf[aligned..];
    }
    Ok(out)
}

/// Where each message of a buffer starts: (sequence number, start, length).
pub fn offsets(buf: &[u8]) -> Vec<(u32, usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        let seq = u32::from_ne_bytes([buf[at + 8], buf[at + 9], buf[at + 10], buf[at + 11]]);
        out.push((seq, at, len));
        at += len.next_multiple_of(4);
    }
    out
}

/// What the attribute at byte `offset` of a request is (as the kernel's
/// extended ack points at it): in a rule, its expression (`expression 3,
/// lookup`); in an element list, the element (`element 2`).
pub fn locate(message: &[u8], offset: usize) -> Option<String> {
    // nlmsghdr and nfgenmsg, then the attributes.
    let mut at = 20;
    while at + 4 <= message.len() {
        let len = u16::from_ne_bytes([message[at], message[at + 1]]) as usize;
        let type_ = u16::from_ne_bytes([message[at + 2], message[at + 3]]) & !NESTED;
        if len < 4 || at + len > message.len() {
            return None;
        }
        if (at..at + len).contains(&offset) {
            let rule = u16::from_ne_bytes([message[4], message[5]]) & 0xff == msg::NEWRULE;
            let list = (rule && type_ == attr::RULE_EXPRESSIONS)
                || (!rule && type_ == attr::SET_ELEM_LIST_ELEMENTS);
            if !list {
                return Some(format!("attribute {type_}"));
            }
            // The list's elements, numbered from 1.
            let mut inner = at + 4;
            let mut n = 0;
            while inner + 4 <= at + len {
                let l = u16::from_ne_bytes([message[inner], message[inner + 1]]) as usize;
                if l < 4 {
                    return None;
                }
                n += 1;
                if (inner..inner + l).contains(&offset) {
                    if !rule {
                        return Some(format!("element {n}"));
                    }
                    let a = attrs(&message[inner + 4..inner + l]);
                    let name = find(&a, 1).map(text).unwrap_or_default();
                    return Some(format!("expression {n}, {name}"));
                }
                inner += l.next_multiple_of(4);
            }
            return None;
        }
        at += len.next_multiple_of(4);
    }
    None
}

/// Attributes: (type without the nested flag, value).
pub fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let type_ = u16::from_ne_bytes([buf[2], buf[3]]) & !NESTED;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((type_, &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// The value of attribute `type_` in `attrs`.
pub fn find<'a>(attrs: &[(u16, &'a [u8])], type_: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == type_).map(|(_, v)| *v)
}

/// A NUL-terminated string attribute's text.
pub fn text(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// A big-endian u32 attribute.
pub fn be32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
}

/// An `NLMSG_ERROR`: the error (0 for an acknowledgement), and, from its
/// extended ack, the kernel's message and the offset of the attribute at
/// fault within the failing request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorAck {
    /// `-errno`, or 0.
    pub error: i32,
    /// `NLMSGERR_ATTR_MSG`.
    pub message: Option<String>,
    /// `NLMSGERR_ATTR_OFFS`.
    pub offset: Option<u32>,
}

/// Parses an `NLMSG_ERROR` payload.
pub fn error_ack(m: &Received<'_>) -> Option<ErrorAck> {
    let p = m.payload;
    let error = i32::from_ne_bytes(p.get(0..4)?.try_into().ok()?);
    // The echoed request: its header only when capped (or on success),
    // else all of it.
    let echoed_len = if m.flags & F_CAPPED != 0 || error == 0 {
        16
    } else {
        u32::from_ne_bytes(p.get(4..8)?.try_into().ok()?) as usize
    };
    let tlvs = p.get((4 + echoed_len).next_multiple_of(4)..).unwrap_or(&[]);
    let (mut message, mut offset) = (None, None);
    if m.flags & F_ACK_TLVS != 0 {
        let a = attrs(tlvs);
        message = find(&a, ERR_ATTR_MSG).map(text);
        offset = find(&a, ERR_ATTR_OFFS)
            .and_then(|v| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)));
    }
    Some(ErrorAck {
        error,
        message,
        offset,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_message_has_its_length_its_headers_and_padded_nested_attributes() {
        let mut buf = Vec::new();
        {
            let mut m = Message::start(
                &mut buf,
                (SUBSYS_NFTABLES << 8) | msg::NEWCHAIN,
                F_REQUEST | F_CREATE,
                7,
                2,
                0,
            );
            m.str(attr::CHAIN_TABLE, "portico")
                .nest(attr::CHAIN_HOOK)
                .u32(attr::HOOK_HOOKNUM, 0)
                .u32(attr::HOOK_PRIORITY, (-100i32) as u32)
                .end()
                .str(attr::CHAIN_NAME, "x");
        }
        let ms = messages(&buf).unwrap();
        assert_eq!(ms.len(), 1);
        assert_eq!(ms[0].type_, 0x0a03);
        assert_eq!(ms[0].flags, 0x401);
        assert_eq!(ms[0].seq, 7);
        assert_eq!(&ms[0].payload[..4], &[2, 0, 0, 0]);
        let a = attrs(&ms[0].payload[4..]);
        assert_eq!(a.len(), 3);
        assert_eq!(text(find(&a, attr::CHAIN_TABLE).unwrap()), "portico");
        let hook = attrs(find(&a, attr::CHAIN_HOOK).unwrap());
        assert_eq!(
            be32(find(&hook, attr::HOOK_PRIORITY).unwrap()),
            Some((-100i32) as u32)
        );
        assert_eq!(text(find(&a, attr::CHAIN_NAME).unwrap()), "x");
        assert_eq!(buf.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize,
            buf.len()
        );
    }

    #[test]
    fn an_error_with_an_extended_ack_gives_its_offset() {
        // error -2, the echoed header (capped), then OFFS = 20.
        let mut payload = (-2i32).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[36, 0, 0, 0, 3, 10, 1, 4, 9, 0, 0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&8u16.to_ne_bytes());
        payload.extend_from_slice(&ERR_ATTR_OFFS.to_ne_bytes());
        payload.extend_from_slice(&20u32.to_ne_bytes());
        let m = Received {
            type_: NLMSG_ERROR,
            flags: F_CAPPED | F_ACK_TLVS,
            seq: 9,
            payload: &payload,
        };
        assert_eq!(
            error_ack(&m),
            Some(ErrorAck {
                error: -2,
                message: None,
                offset: Some(20)
            })
        );
    }
}
