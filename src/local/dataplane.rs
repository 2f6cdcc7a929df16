//! `portico local --dataplane`: the rules `portico node` would program on
//! one node of the manifests, in the current network namespace.
//!
//! ```text
//!  World (after the reconcilers) ──> Catalog (Services + EndpointSlices) ──> Proxier ──> nft
//! ```

use super::world::World;
use portico_catalog::Catalog;
use portico_controllers::NetworkConfig;
use portico_dataplane::{ConntrackTool, Nft, Proxier, SyncReport, can_program_nftables};

/// The catalog of a world: its Services and EndpointSlices.
pub fn catalog(world: &World) -> Catalog {
    let mut c = Catalog::new();
    update_catalog(&mut c, world);
    c.take_changes();
    c
}

/// Brings a catalog to a (reloaded) world; the catalog records what
/// changed.
pub fn update_catalog(catalog: &mut Catalog, world: &World) {
    let services = world.services.store.state();
    catalog.reset_services(services.iter().map(AsRef::as_ref));
    let slices = world.endpoint_slices.store.state();
    catalog.reset_slices(slices.iter().map(AsRef::as_ref));
}

/// The dataplane of one node of the manifests, kept across `--watch`
/// reloads so that a reload is a partial sync.
pub struct LocalDataplane {
    catalog: Catalog,
    proxier: Proxier<Nft, ConntrackTool>,
    node_name: String,
    nodeport_addresses: Vec<String>,
    net: NetworkConfig,
}

impl LocalDataplane {
    /// Refuses without CAP_NET_ADMIN, before anything is changed.
    pub fn new(
        net: &NetworkConfig,
        node_name: &str,
        nodeport_addresses: &[String],
    ) -> anyhow::Result<Self> {
        if !can_program_nftables() {
            anyhow::bail!(
                "--dataplane programs nftables in the current network namespace and needs root \
                 (CAP_NET_ADMIN): run it with sudo, or in a namespace of its own \
                 (sudo ip netns add lab && sudo ip netns exec lab portico local … --dataplane)"
            );
        }
        let config = crate::node::dataplane_config(net, node_name, nodeport_addresses, None)?;
        Ok(LocalDataplane {
            catalog: Catalog::new(),
            proxier: Proxier::new(config, Nft::new(), ConntrackTool::new()),
            node_name: node_name.to_owned(),
            nodeport_addresses: nodeport_addresses.to_vec(),
            net: net.clone(),
        })
    }

    /// Programs the rules for the world: a full sync the first time, then
    /// a partial sync of what changed.
    pub fn sync(&mut self, world: &World) -> anyhow::Result<SyncReport> {
        let node = world
            .nodes
            .sorted()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()));
        if node.is_none() {
            tracing::warn!(node = %self.node_name, "no Node of that name in the manifests: every endpoint counts as remote");
        }
        let config = crate::node::dataplane_config(
            &self.net,
            &self.node_name,
            &self.nodeport_addresses,
            node.as_deref(),
        )?;
        self.proxier.set_config(config);
        update_catalog(&mut self.catalog, world);
        let changes = self.catalog.take_changes();
        Ok(self.proxier.sync(&self.catalog, &changes)?)
    }
}
