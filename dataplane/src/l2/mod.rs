//! L2 announcement of LoadBalancer addresses: one node per address answers
//! ARP (IPv4) and NDP neighbour solicitations (IPv6) for it on the local
//! network, and sends gratuitous ARP / unsolicited neighbour advertisements
//! when it takes the address over and every `--garp-interval` after.
//!
//! ```text
//!  plan (which addresses, which nodes may announce them)
//!        │  + live nodes ──> choice::choose (rendezvous hashing) ──> this node's addresses
//!        v
//!  Announcer ──> one responder thread per interface (AF_PACKET socket):
//!                  ARP request for an address      ──> ARP reply
//!                  neighbour solicitation for one  ──> neighbour advertisement
//!                  takeover, every garp interval   ──> gratuitous ARP / unsolicited NA
//! ```

pub mod choice;
pub mod packet;
pub mod responder;

pub use choice::{Ring, choose};
pub use responder::{Link, Responder, interfaces_for, links};
