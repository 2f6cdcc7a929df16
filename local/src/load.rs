//! Reading manifests: files and directories of multi-document YAML (or JSON),
//! `kind: List` included. A document that cannot be used is reported with its
//! file and index and skipped; the rest is read.

use crate::stored::StoredPod;
use portico_controllers::k8s::{EndpointSlice, Namespace, Node, Pod, Service};
use portico_crds::{ClusterIPRange, IPPool, L2Announcement};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The objects read from the manifests, in document order.
#[derive(Debug, Default)]
pub struct Manifests {
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    pub services: Vec<Service>,
    /// Pods, kept compact (see [`StoredPod`]).
    pub pods: Vec<StoredPod>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub ippools: Vec<IPPool>,
    pub clusteripranges: Vec<ClusterIPRange>,
    pub l2announcements: Vec<L2Announcement>,
    /// What could not be used, and why.
    pub diagnostics: Vec<Diagnostic>,
}

/// A problem with one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// Index of the document in its file (0-based, as kubectl reports).
    pub index: usize,
    /// `true` when the document was skipped; `false` for a note.
    pub skipped: bool,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.skipped { "skipped" } else { "note" };
        write!(
            f,
            "{}: document {}: {what}: {}",
            self.file.display(),
            self.index,
            self.message
        )
    }
}

/// The files that `paths` name: files as given, directories' `*.yaml`,
/// `*.yml` and `*.json` (not recursive), sorted.
pub fn resolve(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// What `--watch` compares to notice a change: each file's path, length and
/// modification time.
pub fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    resolve(paths)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}

/// Reads every manifest file.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Manifests> {
    let mut out = Manifests::default();
    let mut seen = BTreeSet::new();
    for file in resolve(paths)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        read(&file, &text, &mut out, &mut seen);
    }
    Ok(out)
}

/// Reads manifests from text, as from one file named `name`. What cannot
/// be used is a diagnostic, never an error.
pub fn parse(name: &Path, text: &str) -> Manifests {
    let mut out = Manifests::default();
    read(name, text, &mut out, &mut BTreeSet::new());
    out
}

fn read(
    file: &Path,
    text: &str,
    out: &mut Manifests,
    seen: &mut BTreeSet<(String, String, String)>,
) {
    for (index, doc) in split_documents(text).into_iter().enumerate() {
        let mut ctx = Ctx {
            file,
            index,
            out,
            seen,
        };
        match serde_saphyr::from_str::<Value>(doc) {
            Ok(Value::Null) => {}
            Ok(value) => ctx.object(value),
            Err(e) => ctx.skip(format!("not valid YAML: {e}")),
        }
    }
}

/// Splits a YAML stream at document markers (`---` at the start of a line).
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed.starts_with("---\t") {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    // A leading marker leaves an empty first document: not a document.
    if docs.first().is_some_and(|d| d.trim().is_empty()) && docs.len() > 1 {
        docs.remove(0);
    }
    docs
}

struct Ctx<'a> {
    file: &'a Path,
    index: usize,
    out: &'a mut Manifests,
    seen: &'a mut BTreeSet<(String, String, String)>,
}

impl Ctx<'_> {
    fn skip(&mut self, message: String) {
        self.diag(true, message);
    }

    fn diag(&mut self, skipped: bool, message: String) {
        self.out.diagnostics.push(Diagnostic {
            file: self.file.to_path_buf(),
            index: self.index,
            skipped,
            message,
        });
    }

    fn object(&mut self, value: Value) {
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        match (api_version, kind) {
            ("", _) | (_, "") => self.skip("apiVersion and kind are required".to_owned()),
            ("v1", "List") => {
                let items = value
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for item in items {
                    self.object(item);
                }
            }
            ("v1", "Namespace") => {
                if let Some(o) = self.typed::<Namespace>(value, false) {
                    self.out.namespaces.push(o);
                }
            }
            ("v1", "Node") => {
                if let Some(o) = self.typed::<Node>(value, false) {
                    self.out.nodes.push(o);
                }
            }
            ("v1", "Service") => {
                if let Some(o) = self.typed::<Service>(value, true) {
                    self.out.services.push(o);
                }
            }
            ("v1", "Pod") => {
                if let Some(o) = self.typed::<Pod>(value, true) {
                    match StoredPod::new(o) {
                        Ok(p) => self.out.pods.push(p),
                        Err(e) => self.skip(format!("Pod cannot be stored: {e}")),
                    }
                }
            }
            ("portico.dev/v1alpha1", "ClusterIPRange") => {
                if let Some(o) = self.typed::<ClusterIPRange>(value, false) {
                    self.out.clusteripranges.push(o);
                }
            }
            ("portico.dev/v1alpha1", "IPPool") => {
                if let Some(o) = self.typed::<IPPool>(value, false) {
                    self.out.ippools.push(o);
                }
            }
            ("portico.dev/v1alpha1", "L2Announcement") => {
                if let Some(o) = self.typed::<L2Announcement>(value, false) {
                    self.out.l2announcements.push(o);
                }
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                if let Some(o) = self.typed::<EndpointSlice>(value, true) {
                    self.out.endpoint_slices.push(o);
                }
            }
            (api_version, kind) => self.diag(
                false,
                format!("{api_version} {kind} is not used by portico local; ignored"),
            ),
        }
    }

    /// Deserializes one object, checks its name and that it is not a
    /// duplicate, and gives namespaced objects the `default` namespace.
    fn typed<K>(&mut self, value: Value, namespaced: bool) -> Option<K>
    where
        K: DeserializeOwned + kube::Resource<DynamicType = ()>,
    {
        let mut obj: K = match serde_json::from_value(value) {
            Ok(o) => o,
            Err(e) => {
                self.skip(format!("invalid {}: {e}", K::kind(&())));
                return None;
            }
        };
        let meta = obj.meta_mut();
        let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
            self.skip(format!("{} without metadata.name", K::kind(&())));
            return None;
        };
        if namespaced {
            meta.namespace.get_or_insert_with(|| "default".to_owned());
        } else {
            meta.namespace = None;
        }
        let ns = meta.namespace.clone().unwrap_or_default();
        if !self
            .seen
            .insert((K::kind(&()).into_owned(), ns.clone(), name.clone()))
        {
            let what = if ns.is_empty() {
                name
            } else {
                format!("{ns}/{name}")
            };
            self.skip(format!(
                "{} {what} is defined twice; the first definition is used",
                K::kind(&())
            ));
            return None;
        }
        Some(obj)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load_str(text: &str) -> Manifests {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, text).unwrap();
        let mut m = load(&[path]).unwrap();
        for d in &mut m.diagnostics {
            d.file = PathBuf::from("m.yaml");
        }
        m
    }

    #[test]
    fn documents_are_split_at_markers_only() {
        assert_eq!(
            split_documents("a: 1\n---\nb: 2\n"),
            vec!["a: 1\n", "b: 2\n"]
        );
        assert_eq!(
            split_documents("---\na: 1\n--- # c\nb: '---'\n"),
            vec!["a: 1\n", "b: '---'\n"]
        );
        assert_eq!(split_documents("a: |\n  ---x\n"), vec!["a: |\n  ---x\n"]);
    }

    #[test]
    fn invalid_documents_are_reported_with_file_and_index_and_the_rest_is_read() {
        let m = load_str(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: 80}\n---\n\
             : : bad yaml [\n---\n\
             kind: Service\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, namespace: team}\n",
        );
        let names: Vec<String> = m
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, vec!["a"]);
        assert_eq!(m.services[0].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(m.pods.len(), 1);
        let diags: Vec<String> = m.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(diags.len(), 5, "{diags:#?}");
        assert!(
            diags[0].starts_with("m.yaml: document 1: skipped: invalid Service:"),
            "{}",
            diags[0]
        );
        assert!(
            diags[1].starts_with("m.yaml: document 2: skipped: not valid YAML"),
            "{}",
            diags[1]
        );
        assert_eq!(
            diags[2],
            "m.yaml: document 3: skipped: apiVersion and kind are required"
        );
        assert_eq!(
            diags[3],
            "m.yaml: document 4: note: apps/v1 Deployment is not used by portico local; ignored"
        );
        assert_eq!(
            diags[4],
            "m.yaml: document 5: skipped: Service default/a is defined twice; the first definition is used"
        );
    }

    #[test]
    fn directories_are_read_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: b}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.yml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let m = load(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<String> = m
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, vec!["a", "b"]);
        assert!(load(&[dir.path().join("missing.yaml")]).is_err());
    }
}
