//! nf_tables over netlink, without the `nft` program: the message
//! encoding (`wire`, `encode`). Work in progress: tables, chains, sets and
//! maps declared with `type`, and their elements, are encoded as nft 1.0.6
//! encodes them; rules, `typeof` and interval sets are not yet, and no
//! backend sends them.

pub mod encode;
pub mod rule;
pub mod wire;
