//! `ClusterIPRange` (`portico.dev/v1alpha1`, cluster-scoped): a sub-range of
//! the service range for the namespaces a selector picks, so that their
//! Services' ClusterIPs fall in a known block (firewall rules by range).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A block of the service range reserved for some namespaces.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "ClusterIPRange",
    plural = "clusteripranges",
    singular = "clusteriprange",
    status = "ClusterIPRangeStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.used"}"#,
    printcolumn = r#"{"name":"Free","type":"integer","jsonPath":".status.free"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIPRangeSpec {
    /// The block, a CIDR inside a service range (`10.96.16.0/20`).
    pub cidr: String,
    /// The namespaces whose Services get their ClusterIPs from this block.
    /// Other namespaces never get addresses from it.
    pub namespace_selector: LabelSelector,
}

/// What the controller says of a range.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIPRangeStatus {
    /// `Ready`, and `Conflict` (outside every service range, or overlapping
    /// an older range; the message says which).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Addresses held by Services.
    #[serde(default)]
    pub used: i64,
    /// Addresses left.
    #[serde(default)]
    pub free: i64,
}
