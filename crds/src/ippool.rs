//! `IPPool` (`portico.dev/v1alpha1`, cluster-scoped): addresses for
//! `type: LoadBalancer` Services on bare metal.
//!
//! Addresses are strings in the schema (CIDRs and `start-end` ranges); the
//! controller parses them and reports a bad one as a condition, since a
//! structural schema cannot express "a CIDR or a range" (`ipnet`'s schemars
//! support emits a `oneOf` the API server rejects).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A pool of addresses that Portico gives to `type: LoadBalancer` Services.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    singular = "ippool",
    status = "IPPoolStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.used"}"#,
    printcolumn = r#"{"name":"Free","type":"integer","jsonPath":".status.free"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// Addresses of the pool: CIDRs (`192.168.57.0/28`, `fd00:56::/120`) and
    /// inclusive ranges (`192.168.56.60-192.168.56.70`), IPv4 and IPv6.
    pub addresses: Vec<String>,
    /// Give addresses to any Service that matches the selectors. When false,
    /// the pool only serves Services that ask for it by name
    /// (`portico.dev/ip-pool`) or for one of its addresses.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    /// Skip IPv4 addresses ending in `.0` and `.255`, which some old
    /// network equipment mishandles.
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,
    /// Make no new assignments; Services keep the addresses they have.
    #[serde(default)]
    pub disabled: bool,
    /// Only Services with matching labels get addresses from this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Only Services in namespaces with matching labels get addresses from
    /// this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// When several pools fit a Service, the pools with a selector come
    /// first, then the others; within each, the lowest priority wins, 0
    /// (unset) counting after every other value, then the name.
    #[serde(default)]
    pub priority: i32,
}

/// What a manifest with empty `spec` fields means: no addresses, auto
/// assignment on (the schema's default), everything else off.
impl Default for IPPoolSpec {
    fn default() -> Self {
        IPPoolSpec {
            addresses: Vec::new(),
            auto_assign: default_true(),
            avoid_buggy_ips: false,
            disabled: false,
            service_selector: None,
            namespace_selector: None,
            priority: 0,
        }
    }
}

fn default_true() -> bool {
    true
}

/// What the controller says of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// `Ready` (the pool can assign addresses) and `Conflict` (its
    /// addresses overlap another pool, the service range or the pod network;
    /// the message names what).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Addresses held by Services, over both families.
    #[serde(default)]
    pub used: i64,
    /// Addresses left, over both families (saturated at 2^63-1).
    #[serde(default)]
    pub free: i64,
    /// IPv4 counts, when the pool has IPv4 addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<FamilyUsage>,
    /// IPv6 counts, when the pool has IPv6 addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyUsage>,
}

/// Address counts of one family (saturated at 2^63-1: an IPv6 /64 has more).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FamilyUsage {
    /// Addresses in the pool.
    pub total: i64,
    /// Addresses held by Services.
    pub used: i64,
    /// Addresses left.
    pub free: i64,
}
