//! `L2Announcement` (`portico.dev/v1alpha1`, cluster-scoped): which
//! LoadBalancer addresses the node agents announce on the local network
//! (ARP for IPv4, NDP for IPv6), from which nodes and on which interfaces.
//!
//! For each address that some `L2Announcement` selects, exactly one
//! eligible, live node answers; every agent computes which one from the
//! same inputs (rendezvous hashing), so they never need to agree by
//! messages.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Announce some LoadBalancer addresses on layer 2.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "L2Announcement",
    plural = "l2announcements",
    singular = "l2announcement",
    status = "L2AnnouncementStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Pools","type":"string","jsonPath":".spec.ipPools"}"#,
    printcolumn = r#"{"name":"Interfaces","type":"string","jsonPath":".spec.interfaces"}"#,
    printcolumn = r#"{"name":"Announced","type":"integer","jsonPath":".status.announced"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementSpec {
    /// The IPPools whose addresses are announced, by name. With neither
    /// `ipPools` nor `ipPoolSelector`, every pool's.
    #[serde(default, rename = "ipPools", skip_serializing_if = "Vec::is_empty")]
    pub ip_pools: Vec<String>,
    /// The IPPools whose addresses are announced, by label (in addition to
    /// those named in `ipPools`).
    #[serde(
        default,
        rename = "ipPoolSelector",
        skip_serializing_if = "Option::is_none"
    )]
    pub ip_pool_selector: Option<LabelSelector>,
    /// Only the addresses of Services with matching labels (default: every
    /// Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// The nodes allowed to announce (default: every node). Nodes labelled
    /// `node.kubernetes.io/exclude-from-external-load-balancers` never
    /// announce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// The interfaces to announce on: names, or patterns with `*` (`eth*`,
    /// `enp*s0`). Empty: the interface whose network holds the address
    /// (the one the connected route to the address's network goes through).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
}

/// What Portico says of an announcement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementStatus {
    /// `Ready`: `True` when the spec is valid, `False` with the reason
    /// (`InvalidSelector`, `InvalidInterface`, `UnknownPool`) otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Addresses this announcement selects that a live node announces.
    #[serde(default)]
    pub announced: i64,
}
