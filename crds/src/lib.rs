//! Portico's identity in the Kubernetes API.
//!
//! Every string by which Portico is known to the API server lives here: the
//! API group of its custom resources, the field manager it writes with, the
//! condition types, annotations and labels it reads and writes, and the Lease
//! its controllers elect a leader on. Other crates import these constants
//! instead of spelling the strings again.
//!
//! It also holds Portico's custom resource types ([`IPPool`],
//! [`ClusterIPRange`], [`L2Announcement`]);
//! `portico crds` prints every CRD this crate defines and `make crds` writes
//! them to `crds/*.yaml` and the chart, checked for drift by `make test`.
//!
//! ```text
//!   crds (names, CRD types) <── controllers, dns, dataplane, portico binary
//! ```

#![forbid(unsafe_code)]

pub mod clusteriprange;
pub mod ippool;
pub mod l2announcement;
pub mod names;

pub use clusteriprange::{ClusterIPRange, ClusterIPRangeSpec, ClusterIPRangeStatus};
pub use ippool::{FamilyUsage, IPPool, IPPoolSpec, IPPoolStatus};
pub use l2announcement::{L2Announcement, L2AnnouncementSpec, L2AnnouncementStatus};

use kube::CustomResourceExt;

/// Every CustomResourceDefinition that Portico installs, as `(file name,
/// YAML)` in a stable order: what `portico crds` prints and `make crds`
/// writes.
pub fn all() -> Vec<(&'static str, String)> {
    vec![
        (
            "clusteripranges.portico.dev.yaml",
            yaml(&ClusterIPRange::crd()),
        ),
        ("ippools.portico.dev.yaml", yaml(&IPPool::crd())),
        (
            "l2announcements.portico.dev.yaml",
            yaml(&L2Announcement::crd()),
        ),
    ]
}

fn yaml<T: serde::Serialize>(crd: &T) -> String {
    // A CRD is plain data; serializing it cannot fail short of a bug in the
    // YAML writer, which the drift check and the tests would show at once.
    serde_saphyr::to_string(crd).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ippool_spec_by_default_is_what_a_manifest_with_only_addresses_means() {
        let read: IPPoolSpec = serde_json::from_value(serde_json::json!({ "addresses": [] }))
            .expect("a spec with only addresses");
        assert_eq!(read, IPPoolSpec::default());
    }

    #[test]
    fn the_ippool_crd_is_cluster_scoped_with_a_status_subresource_and_columns() {
        let crd = IPPool::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.kind, "IPPool");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Addresses", "Used", "Free", "Ready", "Age"]);
    }

    #[test]
    fn the_l2announcement_crd_is_cluster_scoped_and_reads_like_metallb() {
        let crd = L2Announcement::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.plural, "l2announcements");
        let crd = serde_json::to_value(crd).unwrap_or_default();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let spec = &schema["properties"]["spec"]["properties"];
        for field in [
            "ipPools",
            "ipPoolSelector",
            "serviceSelector",
            "nodeSelector",
            "interfaces",
        ] {
            assert!(spec.get(field).is_some(), "spec.{field} missing: {spec}");
        }
        assert_eq!(
            schema["properties"]["status"]["properties"]["announced"]["type"],
            "integer"
        );
        let parsed: L2Announcement = serde_json::from_value(serde_json::json!({
            "apiVersion": "portico.dev/v1alpha1",
            "kind": "L2Announcement",
            "metadata": { "name": "lab" },
            "spec": { "ipPools": ["lab"], "interfaces": ["eth*"] },
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.spec.ip_pools, ["lab"]);
        assert!(parsed.spec.node_selector.is_none());
    }

    #[test]
    fn the_ippool_schema_is_structural() {
        // A structural schema has a type everywhere and no oneOf/anyOf
        // without one; addresses are plain strings.
        let crd = serde_json::to_value(IPPool::crd()).unwrap_or_default();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["properties"]["addresses"]["items"]["type"], "string");
        assert_eq!(spec["properties"]["autoAssign"]["default"], true);
        fn check(path: &str, v: &serde_json::Value) {
            if let Some(obj) = v.as_object() {
                if obj.contains_key("properties") || obj.contains_key("items") {
                    assert!(obj.contains_key("type"), "{path} has no type");
                }
                for key in ["oneOf", "anyOf"] {
                    if let Some(alts) = obj.get(key) {
                        for alt in alts.as_array().into_iter().flatten() {
                            assert!(
                                alt.get("type").is_none(),
                                "{path}.{key} sets a type: not structural"
                            );
                        }
                    }
                }
                for (k, child) in obj {
                    check(&format!("{path}.{k}"), child);
                }
            } else if let Some(arr) = v.as_array() {
                for (i, child) in arr.iter().enumerate() {
                    check(&format!("{path}[{i}]"), child);
                }
            }
        }
        check("openAPIV3Schema", schema);
    }
}
