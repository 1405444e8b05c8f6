//! A Kubernetes node made of real parts for the runtime tests and the CRI
//! benchmark, the runtime itself aside (see `runtime`): its CNI
//! directories, `weir-policyd install-cni`, weir-policyd on a directory of
//! manifests (the API server's stand-in) and the Pods and NetworkPolicies
//! written there.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{bail, Context, Result};

use crate::lab::Weirctl;
use crate::runtime::{output, CniDirs, PrivateMounts};

/// Who a pod is: what kubelet puts in the CRI's `PodSandboxMetadata` and
/// containerd passes on in `CNI_ARGS` (K8S_POD_NAME, K8S_POD_NAMESPACE,
/// K8S_POD_UID); weir-policyd matches the endpoint to its Pod by all three.
#[derive(Debug, Clone)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// The node's CNI directories as a package manager leaves them before
/// Weir's install: the reference plugins containerd needs (`loopback` for
/// every sandbox's lo) and Weir's conflist chains (portmap, bandwidth).
pub fn node_cni_dirs(root: &Path) -> Result<CniDirs> {
    node_cni_dirs_with(root, &["loopback", "portmap", "bandwidth"])
}

/// [`node_cni_dirs`] with `plugins` of the reference set in the bin dir.
pub fn node_cni_dirs_with(root: &Path, plugins: &[&str]) -> Result<CniDirs> {
    let dirs = CniDirs { conf_dir: root.join("net.d"), bin_dir: root.join("bin") };
    fs::create_dir_all(&dirs.conf_dir)?;
    fs::create_dir_all(&dirs.bin_dir)?;
    for p in plugins {
        let host = Path::new("/usr/lib/cni").join(p);
        if !host.is_file() {
            bail!(
                "{} is missing: run `bash test/deps.sh` (Debian package containernetworking-plugins)",
                host.display()
            );
        }
        std::os::unix::fs::symlink(&host, dirs.bin_dir.join(p))?;
    }
    Ok(dirs)
}

/// `weir-policyd install-cni` as the DaemonSet's init container runs it,
/// for a node whose pod range is given.
pub fn install_cni(weir: &Weirctl, dirs: &CniDirs, pod_cidr: &str) -> Result<String> {
    output(
        Command::new(weir.bin_dir.join("weir-policyd"))
            .args(["install-cni", "--pod-cidr", pod_cidr, "--bin-dir"])
            .arg(&dirs.bin_dir)
            .arg("--conf-dir")
            .arg(&dirs.conf_dir),
    )
}

/// weir-policyd on the node, reading Pods and NetworkPolicies from a
/// directory of manifests (the API server's stand-in), with the
/// conflist's defaults (bpffs root, run dir). It is killed with the
/// node's namespaces; dropping this kills it earlier.
pub struct Policyd {
    child: Child,
    log: PathBuf,
}

impl Policyd {
    pub fn start(
        weir: &Weirctl,
        node: &PrivateMounts,
        manifests: &Path,
        node_name: &str,
        log: PathBuf,
    ) -> Result<Policyd> {
        let out = fs::File::create(&log)?;
        let child = node
            .command(&weir.bin_dir.join("weir-policyd").to_string_lossy())
            .arg("--manifests")
            .arg(manifests)
            .args(["--node-name", node_name])
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting weir-policyd")?;
        Ok(Policyd { child, log })
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|s| s.is_none())
    }
}

impl Drop for Policyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Pod as the API server holds it: before ADD without an address
/// (Pending), after it with the address the runtime reported (what
/// kubelet writes to the Pod's status).
pub fn pod_yaml(pod: &PodMeta, node_name: &str, app: &str, ip: Option<&str>) -> String {
    let status = match ip {
        None => "  phase: Pending\n".to_string(),
        Some(ip) => format!("  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  uid: {}\n  labels:\n    app: {app}\n\
         spec:\n  nodeName: {node_name}\n  containers:\n  - name: main\n    image: pause\nstatus:\n{status}",
        pod.name, pod.namespace, pod.uid
    )
}

/// A NetworkPolicy isolating `app`'s pods for ingress, allowing nothing.
pub fn deny_ingress_yaml(namespace: &str, app: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-{app}\n  namespace: {namespace}\n\
         spec:\n  podSelector:\n    matchLabels:\n      app: {app}\n  policyTypes:\n  - Ingress\n"
    )
}

/// Writes a manifest the way an API server's change lands: whole
/// (written beside, then renamed).
pub fn put_manifest(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, dir.join(name))?;
    Ok(())
}
