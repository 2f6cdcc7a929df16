//! How the local world stores objects: stable UIDs, and pods kept as
//! compact JSON.

use portico_controllers::k8s::Pod;
use std::collections::BTreeMap;

/// A stable UID for an object of the manifests, from its kind and name, so
/// that owner references do not change when `--watch` reloads the files.
pub fn uid(kind: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    use std::hash::{Hash, Hasher};
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (i, kind, namespace, name).hash(&mut h);
        *half = h.finish();
    }
    let hex = format!("{:016x}{:016x}", halves[0], halves[1]);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A Pod as `portico local` keeps it: compact JSON. A typed `Pod` costs
/// about 5 KiB (its container struct alone is 2 KiB), its JSON well under
/// 1 KiB, and a cluster has many pods; they are decoded when needed, much as
/// the API server keeps objects serialized.
#[derive(Clone, Debug)]
pub struct StoredPod {
    pub namespace: String,
    pub name: String,
    json: Box<str>,
}

impl StoredPod {
    /// Stores a pod (with a stable UID if it has none).
    pub fn new(mut pod: Pod) -> serde_json::Result<Self> {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod.metadata.uid.is_none() {
            pod.metadata.uid = Some(uid("Pod", Some(&namespace), Some(&name)));
        }
        Ok(StoredPod {
            namespace,
            name,
            json: serde_json::to_string(&pod)?.into_boxed_str(),
        })
    }

    /// The pod.
    pub fn pod(&self) -> serde_json::Result<Pod> {
        serde_json::from_str(&self.json)
    }
}

/// Every pod, by namespace and name.
#[derive(Default)]
pub struct Pods {
    pods: BTreeMap<(String, String), StoredPod>,
}

impl Pods {
    pub(crate) fn new(pods: Vec<StoredPod>) -> Self {
        Pods {
            pods: pods
                .into_iter()
                .map(|p| ((p.namespace.clone(), p.name.clone()), p))
                .collect(),
        }
    }

    /// Every pod, decoded, in namespace and name order.
    pub fn iter(&self) -> impl Iterator<Item = Pod> + '_ {
        // Decoding what `StoredPod::new` encoded cannot fail.
        self.pods.values().filter_map(|p| p.pod().ok())
    }

    /// How many pods there are.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}
