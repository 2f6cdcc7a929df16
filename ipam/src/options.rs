//! How a pool treats special addresses.

#[cfg(doc)]
use crate::{AllocError, Pool, Usage};

/// How a pool treats special addresses.
///
/// [`PoolOptions::service_range`] is for ClusterIP service ranges (what
/// kube-apiserver does), [`PoolOptions::lb_pool`] for LoadBalancer pools.
/// The default is [`PoolOptions::lb_pool`], everything off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PoolOptions {
    /// Never hand out the network and broadcast addresses of IPv4 CIDRs, nor
    /// the network (subnet-router anycast) address of IPv6 CIDRs. They do
    /// not count in [`Usage::size`], and asking for one gives
    /// [`AllocError::Reserved`]. Ranges (`a-b`) have no such addresses.
    pub reserve_network_broadcast: bool,
    /// Split each CIDR as KEP-3070 does: the lowest
    /// [`static_band_size`](crate::static_band_size) allocatable addresses
    /// form a band that dynamic allocation only uses once the rest of the
    /// pool's family is full. [`Pool::allocate_ip`] works in both bands.
    pub static_band: bool,
    /// Reserve the first address after the network address of each CIDR
    /// (`10.96.0.1` in `10.96.0.0/12`), which belongs to the
    /// `kubernetes.default` Service. Dynamic allocation never returns it and
    /// [`Pool::allocate_ip`] refuses it with [`AllocError::Reserved`];
    /// [`Pool::allocate_reserved_ip`] and [`Pool::rebuild`] take it. It
    /// counts in [`Usage::size`], in [`Usage::used`] when held and in
    /// [`Usage::reserved`] otherwise.
    pub reserve_first: bool,
    /// MetalLB's `avoidBuggyIPs`: IPv4 addresses ending in `.0` or `.255` are
    /// never handed out, not even when asked for explicitly (as MetalLB
    /// does), and do not count in [`Usage::size`].
    pub avoid_buggy_ips: bool,
    /// Hand out the lowest free address (blocks in order) instead of a
    /// random one, as MetalLB and Cilium do for LoadBalancer pools: the
    /// first Service gets the first address, which users expect to see.
    pub lowest_first: bool,
}

impl PoolOptions {
    /// Options for a ClusterIP service range: network/broadcast reserved,
    /// KEP-3070 static band, first address reserved for `kubernetes.default`.
    pub fn service_range() -> PoolOptions {
        PoolOptions {
            reserve_network_broadcast: true,
            static_band: true,
            reserve_first: true,
            avoid_buggy_ips: false,
            lowest_first: false,
        }
    }

    /// Options for a LoadBalancer pool: every address of every block is
    /// allocatable. Set [`PoolOptions::avoid_buggy_ips`] for MetalLB's
    /// behaviour.
    pub fn lb_pool() -> PoolOptions {
        PoolOptions {
            lowest_first: true,
            ..PoolOptions::default()
        }
    }
}
