//! The namespace lab (`portico_testkit::lab`), with the node's `nft` and
//! `conntrack`.

#![allow(unused_imports)]

use portico_dataplane::{ConntrackTool, Nft};
pub use portico_testkit::lab::{From, Lab, TIMEOUT, in_netns};

/// The dataplane's tools in the lab's node namespace.
pub trait NodeTools {
    /// `nft` in the node namespace.
    fn nft(&self) -> Nft;
    /// `conntrack` in the node namespace.
    fn conntrack(&self) -> ConntrackTool;
}

impl NodeTools for Lab {
    fn nft(&self) -> Nft {
        Nft::in_netns(&self.node)
    }

    fn conntrack(&self) -> ConntrackTool {
        ConntrackTool::in_netns(&self.node)
    }
}
