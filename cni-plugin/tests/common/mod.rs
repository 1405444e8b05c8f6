//! Shared harness for the root tests: a "node" network namespace per test
//! (holding its own bridge), pod namespaces, and the real `weir` binary run
//! inside the node namespace with the CNI environment exactly as a runtime
//! sets it. Everything is named uniquely per test and removed on drop.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");
pub const REF_DIR: &str = "/usr/lib/cni";

#[allow(unused_imports)]
pub use weir_testsupport::{is_root, require_root, sh, sh_ok, unique, Netns};

/// What one plugin invocation returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub out: Value,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Value {
        assert_eq!(self.code, 0, "plugin failed: {} / {}", self.out, self.stderr);
        &self.out
    }
    /// The CNI error code (asserting a JSON error and a non-zero exit).
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected failure, got {}", self.out);
        self.out["code"].as_u64().unwrap_or_else(|| panic!("no error code in {}", self.out))
    }
    pub fn msg(&self) -> String {
        self.out["msg"].as_str().unwrap_or_default().to_string()
    }
}

/// The CNI environment of one call.
#[derive(Clone, Debug, Default)]
pub struct Call {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
}

impl Call {
    pub fn new(command: &str, id: &str, netns: &str, ifname: &str) -> Call {
        Call {
            command: command.into(),
            container_id: Some(id.into()),
            netns: Some(netns.into()),
            ifname: Some(ifname.into()),
            args: Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p".into()),
        }
    }
}

/// Exec `bin` inside `node` (setns before exec, so /sys/fs/bpf stays visible) with
/// the CNI variables of `call` and `stdin` as the configuration.
pub fn exec_plugin(node: &Netns, bin: &str, call: &Call, stdin: &[u8]) -> Run {
    let mut cmd = node.command(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("CNI_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("CNI_COMMAND", &call.command)
        .env("CNI_PATH", format!("{REF_DIR}:{}", Path::new(WEIR).parent().unwrap().display()));
    if let Some(v) = &call.container_id {
        cmd.env("CNI_CONTAINERID", v);
    }
    if let Some(v) = &call.netns {
        cmd.env("CNI_NETNS", v);
    }
    if let Some(v) = &call.ifname {
        cmd.env("CNI_IFNAME", v);
    }
    if let Some(v) = &call.args {
        cmd.env("CNI_ARGS", v);
    }
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn the plugin");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(json!({"unparsed": text}))
    };
    Run { code: out.status.code().unwrap_or(-1), out: value, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// A bpffs root removed (pins and all, which detaches what is left) on drop.
pub struct BpfRoot(pub PathBuf);

impl BpfRoot {
    pub fn new() -> BpfRoot {
        BpfRoot(PathBuf::from(format!("/sys/fs/bpf/{}", unique("weir-test-"))))
    }
}

impl Drop for BpfRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node namespace with its own bridge name, IPAM dir and run dir.
pub struct Node {
    pub ns: Netns,
    pub bridge: String,
    pub tmp: tempfile::TempDir,
    pub network: String,
}

impl Node {
    pub fn new() -> Node {
        let ns = Netns::new("wn");
        let bridge = unique("wb");
        let network = unique("net");
        Node { ns, bridge, tmp: tempfile::tempdir().unwrap(), network }
    }
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("ipam")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.tmp.path().join("run")
    }
    pub fn store(&self) -> PathBuf {
        self.data_dir().join(&self.network)
    }
    /// A weir config with one IPv4 and (when `v6`) one IPv6 range.
    pub fn conf(&self, version: &str, v4: &str, v6: Option<&str>) -> Value {
        let mut ranges = vec![json!([{ "subnet": v4 }])];
        if let Some(v6) = v6 {
            ranges.push(json!([{ "subnet": v6 }]));
        }
        json!({
            "cniVersion": version, "name": self.network, "type": "weir", "bridge": self.bridge,
            "hairpinMode": true, "isDefaultGateway": true, "ipMasq": false,
            "ipam": { "type": "host-local", "ranges": ranges, "dataDir": self.data_dir() },
            "policy": { "enforce": false, "runDir": self.run_dir(), "bpffsRoot": self.tmp.path().join("bpffs-unused"), "readyTimeoutMs": 0 }
        })
    }
    pub fn weir(&self, call: &Call, conf: &Value) -> Run {
        exec_plugin(&self.ns, WEIR, call, serde_json::to_vec(conf).unwrap().as_slice())
    }
    pub fn add(&self, id: &str, pod: &Netns, conf: &Value) -> Run {
        self.weir(&Call::new("ADD", id, &pod.path(), "eth0"), conf)
    }
    /// DEL, and after a successful one wait for the veth that DEL leaves
    /// to a background process: it must be gone within seconds.
    pub fn del(&self, id: &str, pod: &Netns, conf: &Value) -> Run {
        let run = self.weir(&Call::new("DEL", id, &pod.path(), "eth0"), conf);
        if run.code == 0 {
            let veth = weir_cni::naming::host_veth(id, "eth0");
            let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while self.ns.has_link(&veth) {
                assert!(std::time::Instant::now() < until, "DEL of {id}: {veth} still exists after 10 s");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        run
    }
    /// Reservation files (IP names) in the store.
    pub fn reserved(&self) -> Vec<String> {
        match std::fs::read_dir(self.store()) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect(),
            Err(_) => vec![],
        }
    }
    pub fn reserved_by(&self, id: &str) -> Vec<String> {
        self.reserved()
            .into_iter()
            .filter(|n| {
                std::fs::read_to_string(self.store().join(n))
                    .map(|b| b.starts_with(&format!("{id}\r\n")))
                    .unwrap_or(false)
            })
            .collect()
    }
    /// Host veths weir left in the node.
    pub fn host_veths(&self) -> Vec<String> {
        self.ns.links().into_iter().filter(|l| l.starts_with("weir")).collect()
    }
    /// Nothing of attachment `id` is left: no reservation, no host veth, no
    /// pod interface or pod route besides what `pod` had before.
    pub fn assert_clean(&self, id: &str, pod: Option<&Netns>) {
        assert!(self.reserved_by(id).is_empty(), "leaked reservations of {id}: {:?}", self.reserved_by(id));
        let veth = weir_cni::naming::host_veth(id, "eth0");
        // DEL hands the veth's removal to a detached process
        // (src/background.rs): wait for it, generously, before calling it leaked.
        let gone = (0..3000).any(|_| {
            let gone = !self.ns.has_link(&veth);
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            gone
        });
        assert!(gone, "leaked host veth {veth}");
        let index = self.run_dir().join("ipam").join(&self.network).join(format!("{id}_eth0"));
        assert!(!index.exists(), "leaked reservation index {}", index.display());
        if let Some(pod) = pod {
            let r4 = pod.ip(&["-4", "route", "show"]);
            let r6 = pod.ip(&["-6", "route", "show"]);
            assert!(r4.trim().is_empty(), "leaked IPv4 routes in pod: {r4}");
            assert!(!r6.contains("default") && !r6.contains("fd"), "leaked IPv6 routes in pod: {r6}");
        }
    }
}

/// The address (without prefix) of the first result IP of a family.
pub fn result_ip(result: &Value, v4: bool) -> std::net::IpAddr {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse::<std::net::IpAddr>().ok())
        .find(|a| a.is_ipv4() == v4)
        .unwrap_or_else(|| panic!("no {} address in {result}", if v4 { "IPv4" } else { "IPv6" }))
}

pub fn result_gateway(result: &Value, v4: bool) -> std::net::IpAddr {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["gateway"].as_str()?.parse::<std::net::IpAddr>().ok())
        .find(|a| a.is_ipv4() == v4)
        .unwrap()
}
