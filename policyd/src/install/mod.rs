//! `weir-policyd install-cni`: puts the CNI binary and its conflist on this
//! node's host (the DaemonSet's init container; install.sh on a bare node).
//!
//! Stages: this node's pod CIDRs (its Node's `spec.podCIDRs`, or given) →
//! `conflist::render` (pure, checked by the CNI binary's parser) → every
//! file staged beside its destination (`files::Staged`) → renamed into
//! place, binaries first and the conflist last: a runtime takes a present
//! conflist to mean "network ready". Any failure before the renames leaves
//! the node as it was. Beside the binaries goes the install record
//! (`record`): what Weir wrote, so that `uninstall` (`uninstall.rs`)
//! removes exactly that.

pub mod conflist;
pub mod files;
pub mod record;
pub mod uninstall;

use crate::source::kube::Access;
use anyhow::anyhow;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use std::io;
use std::path::{Path, PathBuf};
use weir_cni::config::PLUGIN_TYPE;

/// Where this node's pod CIDRs come from.
#[derive(Debug, Clone)]
pub enum PodCidrs {
    /// Given on the command line (a node without an API server: install.sh).
    Given(Vec<IpNet>),
    /// The Node named `node_name`, read through the API.
    Node { access: Access, node_name: String },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub pod_cidrs: PodCidrs,
    /// The cluster's pod ranges; empty keeps the shipped conflist's.
    pub cluster_cidrs: Vec<IpNet>,
    pub cni_version: String,
    /// Where `weir` (and optionally the chained plugins) are taken from.
    pub from: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
}

/// What an install did.
#[derive(Debug)]
pub struct Installed {
    pub pod_cidrs: Vec<IpNet>,
    /// Files renamed into place, in order (the conflist last).
    pub written: Vec<PathBuf>,
    /// Files that already held what would have been written.
    pub unchanged: Vec<PathBuf>,
}

pub async fn run(opts: &Options) -> anyhow::Result<Installed> {
    let pod_cidrs = match &opts.pod_cidrs {
        PodCidrs::Given(c) => c.clone(),
        PodCidrs::Node { access, node_name } => node_pod_cidrs(access, node_name).await?,
    };
    let settings = conflist::Settings {
        cni_version: opts.cni_version.clone(),
        pod_cidrs: pod_cidrs.clone(),
        cluster_cidrs: opts.cluster_cidrs.clone(),
    };
    let text = conflist::render(&settings).map_err(|e| anyhow!("{e}; nothing was changed"))?;
    let staged = stage(opts, &text).map_err(|e| anyhow!("{e:#}; nothing was changed"))?;
    let unchanged = staged.unchanged.clone();
    let written = staged.commit()?;
    Ok(Installed { pod_cidrs, written, unchanged })
}

/// This node's pod CIDRs from its Node object.
async fn node_pod_cidrs(access: &Access, node_name: &str) -> anyhow::Result<Vec<IpNet>> {
    let client = crate::source::kube::client(access).await?;
    let nodes: kube::Api<Node> = kube::Api::all(client);
    let node =
        nodes.get_opt(node_name).await.map_err(|e| anyhow!("reading Node {node_name}: {e}"))?.ok_or_else(|| {
            anyhow!(
                "Node {node_name} does not exist: pass this node's name (--node-name, or NODE_NAME from the \
             downward API's spec.nodeName); nothing was changed"
            )
        })?;
    crate::node::cidr::pod_cidrs(&node).map_err(|e| anyhow!("Node {node_name}: {e}; nothing was changed"))
}

/// Every file written beside its destination, the install record after
/// the binaries, the conflist last; the sources are all read before any
/// directory is touched.
fn stage(opts: &Options, conflist_text: &str) -> anyhow::Result<files::Staged> {
    // A record that cannot be read is as none (a chained plugin Weir wrote
    // is then taken for the host's, the safe side): the init container
    // must not crash-loop on it, and a good one replaces it.
    let prior = record::Record::read(&opts.bin_dir).unwrap_or_else(|e| {
        log::warn!("{e:#}; installing as if there were none");
        None
    });
    let mut binaries = vec![(
        PLUGIN_TYPE.to_string(),
        read_binary(&opts.from, PLUGIN_TYPE).map_err(|e| {
            anyhow!(
                "--from {}: no {PLUGIN_TYPE} binary there ({e}); put the CNI binary next to weir-policyd or pass \
             --from DIR",
                opts.from.display()
            )
        })?,
    )];
    // Chained plugins the host already has are its own (another package
    // installed them): left alone, as install.sh leaves them. One an earlier
    // install wrote, unchanged since, is Weir's: updated from --from when
    // that has it, and kept in the record.
    for p in conflist::plugins_needed(conflist_text) {
        let on_host = opts.bin_dir.join(&p);
        let weirs = prior.as_ref().and_then(|r| std::fs::read(&on_host).ok().filter(|b| r.wrote(&p, b)));
        let (installed, body) = if let Some(old) = weirs {
            match read_binary(&opts.from, &p) {
                Ok(new) => (opts.from.join(&p), Some(new)),
                Err(_) => (on_host, Some(old)),
            }
        } else if is_file(&on_host) {
            (on_host, None)
        } else {
            let body = read_binary(&opts.from, &p).map_err(|e| {
                anyhow!(
                    "{p}: the conflist needs it, but it is neither in --bin-dir {} nor in --from {} ({e}); \
                     install the reference CNI plugins on the host (Debian: containernetworking-plugins) or add \
                     {p} to {}",
                    opts.bin_dir.display(),
                    opts.from.display(),
                    opts.from.display()
                )
            })?;
            (opts.from.join(&p), Some(body))
        };
        let v = &opts.cni_version;
        if v == CHAINED_MUST_BE_ASKED && conflist::chains(conflist_text, &p) && !speaks(&installed, v) {
            return Err(anyhow!(
                "--cni-version {v}: {} does not speak cniVersion {v}, so every pod's ADD would fail; install \
                 containernetworking-plugins >= 1.5, or keep the default {}",
                installed.display(),
                conflist::DEFAULT_CNI_VERSION
            ));
        }
        if let Some(body) = body {
            binaries.push((p, body));
        }
    }
    let mut staged = files::Staged::default();
    staged.ensure_dir(&opts.bin_dir)?;
    staged.ensure_dir(&opts.conf_dir)?;
    let network = weir_cni::config::parse_netconf(serde_json::from_str(conflist_text)?)
        .map_err(|e| anyhow!("the conflist would not be valid: {e}"))?;
    let mut installed = record::Record { binaries: Default::default(), network: record::Network::of(&network) };
    for (name, body) in &binaries {
        staged.add(&opts.bin_dir.join(name), body, 0o755)?;
        installed.binaries.insert(name.clone(), record::digest(body));
    }
    staged.add(&record::Record::path(&opts.bin_dir), &installed.to_bytes(), 0o644)?;
    staged.add(&opts.conf_dir.join(conflist::FILE_NAME), conflist_text.as_bytes(), 0o644)?;
    Ok(staged)
}

/// Every plugin Weir chains speaks up to 1.0.0; only newer versions need
/// asking (Debian 12's portmap and bandwidth, 1.1.1, stop at 1.0.0).
const CHAINED_MUST_BE_ASKED: &str = "1.1.0";

/// Whether `plugin` lists `version` in its answer to VERSION. A plugin
/// that cannot be run, or answers anything else, does not.
fn speaks(plugin: &Path, version: &str) -> bool {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new(plugin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    // A plugin may answer without reading stdin: a broken pipe is fine.
    let _ = child.stdin.take().map(|mut i| i.write_all(br#"{"cniVersion":"1.0.0"}"#));
    let Ok(out) = child.wait_with_output() else { return false };
    let answer = serde_json::Deserializer::from_slice(&out.stdout).into_iter::<serde_json::Value>().next();
    answer.and_then(Result::ok).is_some_and(|v| {
        v["supportedVersions"].as_array().is_some_and(|vs| vs.iter().any(|x| x.as_str() == Some(version)))
    })
}

fn is_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file())
}

fn read_binary(dir: &Path, name: &str) -> io::Result<Vec<u8>> {
    let path = dir.join(name);
    if !is_file(&path) {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} is not a file", path.display())));
    }
    std::fs::read(&path)
}
