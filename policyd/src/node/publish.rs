//! This node's `weir.io/*` annotations, where its peers read them: a JSON
//! merge patch on its own Node through the API, or, with the manifest
//! directory (no API to patch), `<run_dir>/node-annotations.json`, which the
//! lab (acting as API server) copies into this Node's manifest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// File name under the run dir: a JSON object, annotation -> value.
pub const ANNOTATIONS_FILE: &str = "node-annotations.json";

pub enum Publisher {
    Api { client: kube::Client, last: Arc<Mutex<Option<BTreeMap<String, String>>>> },
    File { path: PathBuf },
}

impl Publisher {
    pub fn api(client: kube::Client) -> Publisher {
        Publisher::Api { client, last: Default::default() }
    }

    pub fn file(run_dir: &std::path::Path) -> Publisher {
        Publisher::File { path: run_dir.join(ANNOTATIONS_FILE) }
    }

    /// Publish `wanted` for `node` unless `current` (the annotations the
    /// store holds for it) already says so. The API patch runs in the
    /// background (it must not stall the agent); a failure is logged and
    /// retried at the next reconcile.
    pub fn publish(&self, node: &str, wanted: &BTreeMap<String, String>, current: Option<&BTreeMap<String, String>>) {
        let already = current.is_some_and(|c| wanted.iter().all(|(k, v)| c.get(k) == Some(v)));
        match self {
            Publisher::File { path } => {
                let body = serde_json::to_vec_pretty(wanted).expect("always serializes");
                if std::fs::read(path).is_ok_and(|old| old == body) {
                    return;
                }
                match weir_common::trust::write_private(path, &body) {
                    Ok(()) => log::info!("node {node}: backend annotations written to {}", path.display()),
                    Err(e) => log::warn!("node {node}: cannot write {}: {e}", path.display()),
                }
            }
            Publisher::Api { client, last } => {
                if already {
                    return;
                }
                {
                    let mut last = last.lock().unwrap();
                    if last.as_ref() == Some(wanted) {
                        return; // in flight, or done and not yet seen in the store
                    }
                    *last = Some(wanted.clone());
                }
                let (client, last, node, wanted) = (client.clone(), last.clone(), node.to_string(), wanted.clone());
                tokio::spawn(async move {
                    let api = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client);
                    let patch = serde_json::json!({ "metadata": { "annotations": wanted } });
                    match api.patch(&node, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await {
                        Ok(_) => log::info!("node {node}: backend annotations published"),
                        Err(e) => {
                            log::warn!("node {node}: cannot patch its annotations (retrying at the next resync): {e}");
                            *last.lock().unwrap() = None;
                        }
                    }
                });
            }
        }
    }
}
