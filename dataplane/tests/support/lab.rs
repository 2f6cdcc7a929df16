//! The namespace lab (`portico_testkit::lab`), with the node's `nft` and
//! `conntrack`.

#![allow(unused_imports)]

use portico_dataplane::backend::netlink::Netlink;
use portico_dataplane::{ConntrackTool, Kernel, Nft};
pub use portico_testkit::lab::{From, Lab, TIMEOUT, in_netns};

/// The dataplane's tools in the lab's node namespace.
pub trait NodeTools {
    /// `nft` in the node namespace.
    fn nft(&self) -> Nft;
    /// `conntrack` in the node namespace.
    fn conntrack(&self) -> ConntrackTool;
    /// The backend the tests run under (`PORTICO_DATAPLANE_BACKEND`:
    /// `nft`, the default, or `netlink`), in the node namespace.
    fn kernel(&self) -> Kernel;
}

impl NodeTools for Lab {
    fn nft(&self) -> Nft {
        Nft::in_netns(&self.node)
    }

    fn conntrack(&self) -> ConntrackTool {
        ConntrackTool::in_netns(&self.node)
    }

    fn kernel(&self) -> Kernel {
        match std::env::var("PORTICO_DATAPLANE_BACKEND").as_deref() {
            Ok("netlink") => Kernel::Netlink(in_netns(&self.node, || Netlink::new().unwrap())),
            _ => Kernel::Nft(self.nft()),
        }
    }
}
