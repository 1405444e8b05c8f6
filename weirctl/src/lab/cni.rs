//! Calling the CNI plugin exactly as a container runtime does: the network
//! config on stdin, the CNI_* environment, exec of the plugin binary from
//! inside the node's netns, the JSON result (or error) on stdout.

use super::topology::LabNode;
use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use serde_json::{json, Value};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub const CNI_VERSION: &str = "1.1.0";

/// Everything the lab's network config depends on.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub lab: String,
    pub plugin_type: String,
    pub enforce: bool,
    pub bpffs_root: PathBuf,
    pub run_dir: PathBuf,
    pub ipam_dir: PathBuf,
    /// `ipam.ranges`, one per family; `None` leaves them out, and the
    /// `weir` binary takes the node's pod CIDRs from the `node-network.json`
    /// its weir-policyd writes under `runDir`.
    pub ranges: Option<Vec<IpNet>>,
    pub cluster_cidrs: Vec<IpNet>,
}

/// The `ipam.ranges` of a node's conflist. A one-node lab names its pod
/// CIDRs. A multi-node lab leaves them out, as a cluster would (one
/// conflist for every node, pod CIDRs from each node's `node-network.json`)
/// when its weir-policyd writes that file (`node_network_written`: it runs
/// a backend); otherwise each node's conflist names that node's CIDRs.
pub fn ipam_ranges(node: &LabNode, node_network_written: bool) -> Option<Vec<IpNet>> {
    if node.multi && node_network_written {
        return None;
    }
    Some(node.pod_cidrs.clone())
}

impl NetConf {
    pub fn network_name(&self) -> String {
        format!("weir-lab-{}", self.lab)
    }

    /// The conflist a runtime would read from /etc/cni/net.d.
    pub fn conflist(&self) -> Value {
        json!({
            "cniVersion": CNI_VERSION,
            "name": self.network_name(),
            "plugins": [self.plugin_entry()],
        })
    }

    fn plugin_entry(&self) -> Value {
        let mut ipam = json!({
            "type": "host-local",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            "dataDir": self.ipam_dir,
        });
        if let Some(ranges) = &self.ranges {
            ipam["ranges"] = ranges.iter().map(|r| json!([{"subnet": r.to_string()}])).collect();
        }
        json!({
            "type": self.plugin_type,
            "bridge": "cni0",
            "mtu": 1500,
            "hairpinMode": true,
            "isDefaultGateway": true,
            "ipMasq": false,
            "clusterCIDRs": self.cluster_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "ipam": ipam,
            "policy": {
                "enforce": self.enforce,
                "bpffsRoot": self.bpffs_root,
                "runDir": self.run_dir,
                "readyTimeoutMs": 10000,
                "whileNotReady": "drop",
                "onReadyTimeout": "fail",
            },
        })
    }

    /// What a runtime puts on the plugin's stdin for one plugin of the list:
    /// the entry plus the list's `cniVersion` and `name`.
    pub fn stdin_config(&self) -> Value {
        let mut v = self.plugin_entry();
        v["cniVersion"] = json!(CNI_VERSION);
        v["name"] = json!(self.network_name());
        v
    }
}

/// One CNI invocation's identity.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
}

impl Attachment {
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={};K8S_POD_INFRA_CONTAINER_ID={}",
            self.pod_namespace, self.pod_name, self.pod_uid, self.container_id
        )
    }
}

/// Where the plugin binaries are: the `--cni-bin-dir`, else next to this
/// executable, else /opt/cni/bin.
pub fn locate_plugin(explicit: Option<&Path>, plugin: &str) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = explicit {
        dirs.push(d.to_path_buf());
    } else {
        if let Some(d) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
            dirs.push(d);
        }
        dirs.push(PathBuf::from("/opt/cni/bin"));
    }
    for d in dirs {
        let p = d.join(plugin);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    bail!(
        "CNI plugin {plugin:?} not found (looked at {}); build it (`cargo build -p weir-cni`) or pass --cni-bin-dir DIR",
        tried.join(", ")
    )
}

/// Pod addresses from a CNI result: the `ips` on interfaces inside the
/// sandbox (or all `ips` when the plugin did not list interfaces).
pub fn result_ips(result: &Value) -> Result<Vec<IpAddr>> {
    let ifaces = result.get("interfaces").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for ip in result.get("ips").and_then(|v| v.as_array()).into_iter().flatten() {
        if let Some(idx) = ip.get("interface").and_then(|i| i.as_u64()) {
            let in_sandbox = ifaces
                .get(idx as usize)
                .map(|i| i.get("sandbox").and_then(|s| s.as_str()).map(|s| !s.is_empty()).unwrap_or(false))
                .unwrap_or(true);
            if !in_sandbox {
                continue;
            }
        }
        let addr = ip.get("address").and_then(|a| a.as_str()).context("CNI result: an `ips` entry has no `address`")?;
        let net: ipnet::IpNet =
            addr.parse().with_context(|| format!("CNI result: address {addr:?} is not CIDR notation"))?;
        out.push(net.addr());
    }
    if out.is_empty() {
        bail!("CNI result has no IP address for the pod: {result}");
    }
    Ok(out)
}

/// A CNI error document `{code, msg, details}` as one line.
pub fn describe_error(stdout: &str) -> Option<String> {
    let v: Value = serde_json::from_str(stdout.trim()).ok()?;
    let code = v.get("code")?.as_u64()?;
    let msg = v.get("msg").and_then(|m| m.as_str()).unwrap_or("");
    let details = v.get("details").and_then(|m| m.as_str()).unwrap_or("");
    Some(if details.is_empty() {
        format!("CNI error {code}: {msg}")
    } else {
        format!("CNI error {code}: {msg} ({details})")
    })
}

/// Exec the plugin inside `node_netns` with the runtime's environment.
pub fn invoke(
    plugin: &Path,
    cni_path: &str,
    node_netns: &str,
    command: &str,
    att: &Attachment,
    conf: &NetConf,
) -> Result<Value> {
    let mut cmd = super::sys::command_in(node_netns, plugin)?;
    cmd.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &att.container_id)
        .env("CNI_NETNS", &att.netns)
        .env("CNI_IFNAME", &att.ifname)
        .env("CNI_ARGS", att.cni_args())
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(l) = std::env::var("RUST_LOG") {
        cmd.env("RUST_LOG", l);
    }
    let mut child = cmd.spawn().with_context(|| format!("exec {}", plugin.display()))?;
    let stdin = serde_json::to_vec(&conf.stdin_config())?;
    child.stdin.take().expect("piped").write_all(&stdin)?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pod = format!("{}/{}", att.pod_namespace, att.pod_name);
    if !out.status.success() {
        let why = describe_error(&stdout).unwrap_or_else(|| stdout.trim().to_string());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
        bail!(
            "CNI {command} for pod {pod} failed ({}): {why}{}",
            out.status,
            if tail.is_empty() { String::new() } else { format!("; plugin log: {}", tail.join(" | ")) }
        );
    }
    if command != "ADD" {
        return Ok(Value::Null);
    }
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("CNI ADD for pod {pod}: the result is not JSON: {stdout}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> NetConf {
        NetConf {
            lab: "t".into(),
            plugin_type: "weir".into(),
            enforce: true,
            bpffs_root: "/sys/fs/bpf/weir-lab-t".into(),
            run_dir: "/run/weir/lab/t/run".into(),
            ipam_dir: "/run/weir/lab/t/ipam".into(),
            ranges: Some(vec!["10.88.0.0/16".parse().unwrap(), "fd00:88::/64".parse().unwrap()]),
            cluster_cidrs: vec!["10.88.0.0/16".parse().unwrap(), "fd00:88::/64".parse().unwrap()],
        }
    }

    /// The one-node lab's config, byte for byte what it always was.
    #[test]
    fn one_node_entry_is_unchanged() {
        let want = json!({
            "type": "weir", "bridge": "cni0", "mtu": 1500, "hairpinMode": true, "isDefaultGateway": true, "ipMasq": false,
            "clusterCIDRs": ["10.88.0.0/16", "fd00:88::/64"],
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd00:88::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                "dataDir": "/run/weir/lab/t/ipam",
            },
            "policy": {
                "enforce": true, "bpffsRoot": "/sys/fs/bpf/weir-lab-t", "runDir": "/run/weir/lab/t/run",
                "readyTimeoutMs": 10000, "whileNotReady": "drop", "onReadyTimeout": "fail",
            },
        });
        assert_eq!(conf().plugin_entry(), want);
        let mut open = conf();
        open.ranges = None;
        assert!(open.plugin_entry()["ipam"].get("ranges").is_none());
        assert_eq!(open.plugin_entry()["ipam"]["type"], "host-local");
    }

    #[test]
    fn a_multi_node_lab_leaves_ranges_to_the_node_network_file_when_policyd_writes_it() {
        let one = &crate::lab::topology::nodes("t", std::path::Path::new("/x"), 1)[0];
        assert_eq!(ipam_ranges(one, true), Some(one.pod_cidrs.clone()));
        let multi = &crate::lab::topology::nodes("t", std::path::Path::new("/x"), 2)[1];
        assert_eq!(ipam_ranges(multi, false), Some(multi.pod_cidrs.clone()));
        assert_eq!(ipam_ranges(multi, true), None);
    }

    #[test]
    fn stdin_config_is_the_entry_with_version_and_name() {
        let c = conf().stdin_config();
        assert_eq!(c["cniVersion"], "1.1.0");
        assert_eq!(c["name"], "weir-lab-t");
        assert_eq!(c["type"], "weir");
        assert_eq!(c["ipam"]["ranges"][1][0]["subnet"], "fd00:88::/64");
        assert_eq!(c["policy"]["bpffsRoot"], "/sys/fs/bpf/weir-lab-t");
        assert_eq!(c["policy"]["runDir"], "/run/weir/lab/t/run");
        assert_eq!(c["ipam"]["dataDir"], "/run/weir/lab/t/ipam");
        let l = conf().conflist();
        assert_eq!(l["plugins"][0]["type"], "weir");
        assert!(l["plugins"][0].get("name").is_none());
    }

    #[test]
    fn cni_args_shape() {
        let a = Attachment {
            container_id: "c1".into(),
            netns: "/run/netns/p".into(),
            ifname: "eth0".into(),
            pod_namespace: "x".into(),
            pod_name: "a".into(),
            pod_uid: "u".into(),
        };
        assert_eq!(
            a.cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_UID=u;K8S_POD_INFRA_CONTAINER_ID=c1"
        );
    }

    #[test]
    fn parses_result_ips_in_sandbox_only() {
        let r: Value = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","interfaces":[{"name":"cni0","mac":"aa"},{"name":"veth1","mac":"bb"},{"name":"eth0","mac":"cc","sandbox":"/run/netns/p"}],
                "ips":[{"address":"10.88.0.5/16","gateway":"10.88.0.1","interface":2},{"address":"fd00:88::5/64","interface":2},{"address":"10.88.0.1/16","interface":0}]}"#,
        )
        .unwrap();
        assert_eq!(
            result_ips(&r).unwrap(),
            vec!["10.88.0.5".parse::<IpAddr>().unwrap(), "fd00:88::5".parse().unwrap()]
        );
        assert!(result_ips(&serde_json::json!({"ips": []})).is_err());
        let bare: Value = serde_json::from_str(r#"{"ips":[{"address":"10.88.0.7/16"}]}"#).unwrap();
        assert_eq!(result_ips(&bare).unwrap().len(), 1);
    }

    #[test]
    fn error_document() {
        assert_eq!(
            describe_error(r#"{"cniVersion":"1.1.0","code":11,"msg":"not ready","details":"policyd down"}"#).unwrap(),
            "CNI error 11: not ready (policyd down)"
        );
        assert!(describe_error("garbage").is_none());
    }
}
