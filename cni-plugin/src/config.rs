//! The runtime's input: environment variables and the network configuration
//! on stdin, validated up front so every later step works on checked values
//! and every mistake is reported with the field that holds it.

use crate::error::{code, CniError, Result};
use crate::ip::{self, Range, RangeSet};
use ipnet::IpNet;
use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use weir_common::node_network::{self, NodeNetwork};

/// Every spec version whose result layout this plugin produces.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const PLUGIN_TYPE: &str = "weir";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
pub const DEFAULT_BRIDGE: &str = "cni0";
pub const DEFAULT_READY_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

/// The `CNI_*` environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
}

impl Env {
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

pub fn parse_command(v: Option<&str>) -> Result<Command> {
    Ok(match v {
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("STATUS") => Command::Status,
        Some("GC") => Command::Gc,
        Some("VERSION") => Command::Version,
        Some(other) => {
            return Err(CniError::env(format!(
                "CNI_COMMAND={other:?} is not a CNI command; use ADD, DEL, CHECK, STATUS, GC or VERSION"
            )))
        }
        None => {
            return Err(CniError::env(
                "CNI_COMMAND is not set; a runtime sets it to ADD, DEL, CHECK, STATUS, GC or VERSION",
            ))
        }
    })
}

/// Read and check the variables `command` needs; `get` abstracts the process
/// environment so the rules are unit-tested.
pub fn parse_env(command: Command, get: impl Fn(&str) -> Option<String>) -> Result<Env> {
    let need = |name: &str| -> Result<String> {
        match get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(CniError::env(format!("{name} is not set; the runtime must pass it for this command"))),
        }
    };
    let mut env = Env::default();
    let (needs_id, needs_netns, needs_ifname) = match command {
        Command::Add | Command::Check => (true, true, true),
        Command::Del => (true, false, true),
        Command::Status | Command::Gc | Command::Version => (false, false, false),
    };
    if needs_id {
        env.container_id = need("CNI_CONTAINERID")?;
        if !env.container_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || !env.container_id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        {
            return Err(CniError::env(format!(
                "CNI_CONTAINERID={:?}: must start with a letter or digit and hold only letters, digits, '-', '_' and '.'",
                env.container_id
            )));
        }
    }
    if needs_netns {
        env.netns = need("CNI_NETNS")?;
    } else {
        env.netns = get("CNI_NETNS").unwrap_or_default();
    }
    if needs_ifname {
        env.ifname = need("CNI_IFNAME")?;
        check_ifname(&env.ifname)?;
    }
    if let Some(args) = get("CNI_ARGS") {
        env.args = parse_cni_args(&args)?;
    }
    env.path = get("CNI_PATH")
        .map(|p| p.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
        .unwrap_or_default();
    Ok(env)
}

/// What the kernel refuses in an interface name (`dev_valid_name`), and
/// `%`, which it would take as a pattern (`eth%d`) and replace, so the
/// interface would not get the name asked for. `None` when valid.
pub fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 15 {
        Some("it must be 1-15 characters")
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are not interface names")
    } else if name.chars().any(|c| c == '/' || c == ':' || c == '%' || c.is_whitespace() || c.is_control()) {
        Some("it must not hold '/', ':', '%', spaces or control characters")
    } else {
        None
    }
}

fn check_ifname(name: &str) -> Result<()> {
    match ifname_problem(name) {
        Some(why) => Err(CniError::env(format!("CNI_IFNAME={name:?} is not a valid interface name: {why}"))),
        None => Ok(()),
    }
}

/// `K=V;K=V` (the runtime adds `IgnoreUnknown=1`; unknown keys are always
/// ignored here, since this plugin reads only the K8S_POD_* ones).
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None => return Err(CniError::env(format!("CNI_ARGS: {pair:?} is not KEY=VALUE; separate pairs with ';'"))),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConf {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostLocal {
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<RouteConf>,
    pub data_dir: PathBuf,
    /// With `ranges` left out they come from this node's network file
    /// (weir-policyd writes it from the Node's podCIDRs); until it is there
    /// `range_sets` is empty and this says why. DEL and GC do not need
    /// ranges, so this is an error only for ADD (code 11) and STATUS (50).
    pub ranges_pending: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Ipam {
    HostLocal(HostLocal),
    /// Another IPAM plugin, exec'd from CNI_PATH with this whole config.
    Delegate {
        plugin: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhileNotReady {
    Drop,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReadyTimeout {
    Fail,
    Continue,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub enforce: bool,
    pub bpffs_root: PathBuf,
    pub run_dir: PathBuf,
    pub ready_timeout_ms: u64,
    pub while_not_ready: WhileNotReady,
    pub on_ready_timeout: OnReadyTimeout,
    /// How the programs attach to the host veth (`policy.attach`); a
    /// pod's own mechanism is [`Policy::attach_for`].
    pub attach: weir_bpf::AttachMode,
}

impl Policy {
    /// The mechanism for one pod. "auto" takes clsact + cls_bpf: attaching
    /// a TCX link waits for an RCU grace period under RTNL, about 3x the
    /// cost of the whole ADD (docs/benchmarks.md, "CNI ADD/DEL"), while a
    /// filter does not. Except when the pod's egress is shaped: the
    /// reference bandwidth plugin, chained after us, then adds an `ingress`
    /// qdisc to the host veth, which the kernel refuses beside clsact
    /// ("Exclusivity flag on"), so such a pod gets TCX where the kernel has
    /// it. "tcx" and "tc" are taken as asked.
    pub fn attach_for(&self, egress_shaped: bool) -> weir_bpf::AttachMode {
        match self.attach {
            weir_bpf::AttachMode::Auto if !egress_shaped => weir_bpf::AttachMode::Tc,
            m => m,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enforce: false,
            bpffs_root: weir_common::paths::DEFAULT_BPFFS_ROOT.into(),
            run_dir: weir_common::paths::DEFAULT_RUN_DIR.into(),
            ready_timeout_ms: DEFAULT_READY_TIMEOUT_MS,
            while_not_ready: WhileNotReady::Drop,
            on_ready_timeout: OnReadyTimeout::Fail,
            attach: weir_bpf::AttachMode::Auto,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    /// Put the range gateways on the bridge.
    pub is_gateway: bool,
    /// Give the pod a default route via the gateway of each family.
    pub is_default_gateway: bool,
    pub ip_masq: bool,
    pub cluster_cidrs: Vec<IpNet>,
    pub ipam: Ipam,
    pub policy: Policy,
    pub prev_result: Option<Value>,
    /// The configuration as received, for delegated IPAM.
    pub raw: Value,
}

impl NetConf {
    pub fn host_local(&self) -> Option<&HostLocal> {
        match &self.ipam {
            Ipam::HostLocal(h) => Some(h),
            Ipam::Delegate { .. } => None,
        }
    }
    /// Directory of the host-local store for this network.
    pub fn store_dir(&self) -> Option<PathBuf> {
        self.host_local().map(|h| store_dir(&h.data_dir, &self.name))
    }
    pub fn version_at_least(&self, v: &str) -> bool {
        version_key(&self.cni_version) >= version_key(v)
    }
}

/// The host-local store of the network `network` under `ipam.dataDir`.
pub fn store_dir(data_dir: &Path, network: &str) -> PathBuf {
    data_dir.join(network)
}

pub fn version_key(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Decode stdin: malformed JSON is code 6, anything else wrong is code 7
/// (or 1 for a version this plugin does not speak).
pub fn parse_stdin(bytes: &[u8]) -> Result<Value> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("network configuration on stdin is not valid JSON ({e}); pass the plugin's config object"),
        )
    })?;
    if !v.is_object() {
        return Err(CniError::new(code::DECODE, "network configuration on stdin must be a JSON object"));
    }
    Ok(v)
}

/// The `cniVersion` to echo in an error, as far as stdin can be read.
pub fn version_of(v: &Value) -> String {
    v.get("cniVersion").and_then(Value::as_str).unwrap_or("1.1.0").to_string()
}

pub fn check_version(v: &str) -> Result<()> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {v:?} is not supported; use one of {}", SUPPORTED_VERSIONS.join(", ")),
        ))
    }
}

/// A whole conflist on stdin (handy by hand) is reduced to weir's entry, with
/// `name` and `cniVersion` injected the way runtimes do.
fn select_entry(mut v: Value) -> Result<Value> {
    let Some(plugins) = v.get("plugins").and_then(Value::as_array) else { return Ok(v) };
    let mut entry = plugins
        .iter()
        .find(|p| p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE))
        .cloned()
        .ok_or_else(|| CniError::config("plugins: this conflist has no entry with \"type\": \"weir\""))?;
    for key in ["name", "cniVersion"] {
        if let Some(x) = v.get_mut(key).map(Value::take) {
            entry[key] = x;
        }
    }
    Ok(entry)
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn opt_str(v: &Value, path: &str, key: &str) -> Result<Option<String>> {
    match field(v, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::config(format!("{path}{key}: expected a string, got {other}"))),
    }
}

fn opt_bool(v: &Value, path: &str, key: &str) -> Result<Option<bool>> {
    match field(v, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(CniError::config(format!("{path}{key}: expected true or false, got {other}"))),
    }
}

fn opt_u64(v: &Value, path: &str, key: &str) -> Result<Option<u64>> {
    match field(v, key) {
        None => Ok(None),
        Some(x) => x
            .as_u64()
            .map(Some)
            .ok_or_else(|| CniError::config(format!("{path}{key}: expected a non-negative integer, got {x}"))),
    }
}

fn parse_net(s: &str, at: &str) -> Result<IpNet> {
    s.parse::<IpNet>().map_err(|_| {
        CniError::config(format!(
            "{at}: {s:?} is not a CIDR prefix; write an address and a prefix length such as 10.244.1.0/24 or fd00:10:244:1::/64"
        ))
    })
}

fn parse_ip(s: &str, at: &str) -> Result<IpAddr> {
    s.parse::<IpAddr>()
        .map_err(|_| CniError::config(format!("{at}: {s:?} is not an IP address; write e.g. 10.244.1.1 or fd00::1")))
}

pub fn parse_netconf(input: Value) -> Result<NetConf> {
    let v = select_entry(input)?;
    let cni_version = opt_str(&v, "", "cniVersion")?
        .ok_or_else(|| CniError::config("cniVersion is missing; set it to e.g. \"1.1.0\""))?;
    check_version(&cni_version)?;
    let name = opt_str(&v, "", "name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CniError::config("name is missing; every network needs a name (it names the IPAM directory)"))?;
    if name.contains('/') || name == "." || name == ".." {
        return Err(CniError::config(format!("name {name:?} must not contain '/' (it is a directory name)")));
    }
    let ty = opt_str(&v, "", "type")?.unwrap_or_default();
    if ty != PLUGIN_TYPE {
        return Err(CniError::config(format!(
            "type {ty:?} is not this plugin; this binary is \"{PLUGIN_TYPE}\": set \"type\": \"{PLUGIN_TYPE}\""
        )));
    }
    let bridge = opt_str(&v, "", "bridge")?.unwrap_or_else(|| DEFAULT_BRIDGE.into());
    if let Some(why) = ifname_problem(&bridge) {
        return Err(CniError::config(format!("bridge {bridge:?} is not a valid interface name: {why}")));
    }
    let mtu = match opt_u64(&v, "", "mtu")? {
        None | Some(0) => None,
        Some(m) if (68..=65535).contains(&m) => Some(m as u32),
        Some(m) => return Err(CniError::config(format!("mtu {m} is out of range; use 68..65535 or omit it"))),
    };
    let hairpin = opt_bool(&v, "", "hairpinMode")?.unwrap_or(false);
    let is_gateway = opt_bool(&v, "", "isGateway")?.unwrap_or(true);
    let is_default_gateway = opt_bool(&v, "", "isDefaultGateway")?.unwrap_or(true);
    let ip_masq = opt_bool(&v, "", "ipMasq")?.unwrap_or(false);
    let mut cluster_cidrs = Vec::new();
    match field(&v, "clusterCIDRs") {
        None => {}
        Some(Value::Array(a)) => {
            for (i, c) in a.iter().enumerate() {
                let s = c
                    .as_str()
                    .ok_or_else(|| CniError::config(format!("clusterCIDRs[{i}]: expected a CIDR string, got {c}")))?;
                cluster_cidrs.push(parse_net(s, &format!("clusterCIDRs[{i}]"))?);
            }
        }
        Some(other) => return Err(CniError::config(format!("clusterCIDRs: expected a list of CIDRs, got {other}"))),
    }
    let ipam_v = field(&v, "ipam").ok_or_else(|| {
        CniError::config("ipam is missing; add e.g. \"ipam\": {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": \"10.244.1.0/24\"}]]}")
    })?;
    let policy = match field(&v, "policy") {
        None => Policy::default(),
        Some(p) => parse_policy(p)?,
    };
    let node = node_network_if_needed(ipam_v, &policy.run_dir);
    let ipam = parse_ipam(ipam_v, node.as_ref())?;
    // The backend's MTU (the underlay's less encapsulation) unless set
    // here, whether or not the ranges came from the same file: a conflist
    // with explicit ranges on a VXLAN node still needs the smaller MTU.
    let mtu = match (mtu, &node) {
        (Some(m), _) => Some(m),
        (None, Some(NodeFile::Ready(n))) => n.mtu,
        (None, Some(_)) => None,
        (None, None) => NodeNetwork::read(&policy.run_dir).ok().flatten().and_then(|n| n.mtu),
    };
    let prev_result = field(&v, "prevResult").cloned();
    Ok(NetConf {
        cni_version,
        name,
        bridge,
        mtu,
        hairpin,
        is_gateway,
        is_default_gateway,
        ip_masq,
        cluster_cidrs,
        ipam,
        policy,
        prev_result,
        raw: v,
    })
}

fn parse_policy(p: &Value) -> Result<Policy> {
    if !p.is_object() {
        return Err(CniError::config(format!("policy: expected an object, got {p}")));
    }
    let d = Policy::default();
    let while_not_ready = match opt_str(p, "policy.", "whileNotReady")?.as_deref() {
        None | Some("drop") => WhileNotReady::Drop,
        Some("allow") => WhileNotReady::Allow,
        Some(o) => return Err(CniError::config(format!("policy.whileNotReady {o:?}: use \"drop\" or \"allow\""))),
    };
    let on_ready_timeout = match opt_str(p, "policy.", "onReadyTimeout")?.as_deref() {
        None | Some("fail") => OnReadyTimeout::Fail,
        Some("continue") => OnReadyTimeout::Continue,
        Some(o) => return Err(CniError::config(format!("policy.onReadyTimeout {o:?}: use \"fail\" or \"continue\""))),
    };
    let attach = match opt_str(p, "policy.", "attach")? {
        None => d.attach,
        Some(a) => weir_bpf::AttachMode::parse(&a).ok_or_else(|| {
            CniError::config(format!(
                "policy.attach {a:?}: use \"auto\" (tc, or TCX for a pod whose egress is shaped), \"tcx\" or \"tc\" \
                 (clsact + cls_bpf)"
            ))
        })?,
    };
    Ok(Policy {
        enforce: opt_bool(p, "policy.", "enforce")?.unwrap_or(false),
        bpffs_root: opt_str(p, "policy.", "bpffsRoot")?.map(PathBuf::from).unwrap_or(d.bpffs_root),
        run_dir: opt_str(p, "policy.", "runDir")?.map(PathBuf::from).unwrap_or(d.run_dir),
        ready_timeout_ms: opt_u64(p, "policy.", "readyTimeoutMs")?.unwrap_or(d.ready_timeout_ms),
        while_not_ready,
        on_ready_timeout,
        attach,
    })
}

/// This node's network file as the CNI binary found it.
enum NodeFile {
    Ready(NodeNetwork),
    Missing(PathBuf),
    Unusable(String),
}

/// Read only when host-local is given neither `ranges` nor `subnet`
/// (explicit ranges always win).
fn node_network_if_needed(ipam: &Value, run_dir: &Path) -> Option<NodeFile> {
    let host_local = matches!(field(ipam, "type").and_then(Value::as_str), None | Some("host-local"));
    if !host_local || field(ipam, "ranges").is_some() || field(ipam, "subnet").is_some() {
        return None;
    }
    Some(match NodeNetwork::read(run_dir) {
        Ok(Some(n)) => NodeFile::Ready(n),
        Ok(None) => NodeFile::Missing(node_network::path(run_dir)),
        Err(e) => NodeFile::Unusable(e.to_string()),
    })
}

fn parse_ipam(v: &Value, node: Option<&NodeFile>) -> Result<Ipam> {
    if !v.is_object() {
        return Err(CniError::config(format!("ipam: expected an object, got {v}")));
    }
    let ty = opt_str(v, "ipam.", "type")?.unwrap_or_else(|| "host-local".into());
    if ty != "host-local" {
        if ty.is_empty() || ty.contains('/') {
            return Err(CniError::config(format!("ipam.type {ty:?} is not a plugin name")));
        }
        return Ok(Ipam::Delegate { plugin: ty });
    }
    let mut raw_sets: Vec<(String, Vec<Value>)> = Vec::new();
    match field(v, "ranges") {
        Some(Value::Array(sets)) if sets.is_empty() => {
            return Err(CniError::config(
                "ipam.ranges is an empty list; give at least one range set, e.g. [[{\"subnet\": \"10.244.1.0/24\"}]], \
                 or leave ranges out to use this node's pod CIDRs from weir-policyd",
            ))
        }
        Some(Value::Array(sets)) => {
            for (i, set) in sets.iter().enumerate() {
                let ranges = set.as_array().ok_or_else(|| {
                    CniError::config(format!("ipam.ranges[{i}]: expected a list of ranges (a range set), got {set}"))
                })?;
                if ranges.is_empty() {
                    return Err(CniError::config(format!(
                        "ipam.ranges[{i}] is empty; give at least one {{\"subnet\": ...}}"
                    )));
                }
                raw_sets.push((format!("ipam.ranges[{i}]"), ranges.clone()));
            }
        }
        Some(other) => {
            return Err(CniError::config(format!("ipam.ranges: expected a list of range sets, got {other}")))
        }
        None => {}
    }
    // Legacy single-range form: ipam.subnet (+ rangeStart/rangeEnd/gateway).
    if field(v, "subnet").is_some() {
        if !raw_sets.is_empty() {
            return Err(CniError::config("ipam: give either \"subnet\" or \"ranges\", not both"));
        }
        raw_sets.push(("ipam".into(), vec![v.clone()]));
    }
    let mut ranges_pending = None;
    if raw_sets.is_empty() {
        match node {
            Some(NodeFile::Ready(n)) => {
                for (i, cidr) in n.pod_cidrs.iter().enumerate() {
                    raw_sets.push((
                        format!("{} podCIDRs[{i}] (node {})", node_network::FILE, n.node),
                        vec![serde_json::json!({ "subnet": cidr.to_string() })],
                    ));
                }
            }
            Some(NodeFile::Missing(path)) => {
                ranges_pending = Some(format!(
                    "ipam.ranges is left out, so this node's pod CIDRs come from weir-policyd, which has not written \
                     {} yet (it does once this node's Node object has spec.podCIDRs): check that weir-policyd runs \
                     with this node's --node-name and --run-dir, or set ipam.ranges",
                    path.display()
                ));
            }
            Some(NodeFile::Unusable(e)) => {
                ranges_pending = Some(format!("ipam.ranges is left out and this node's network file is unusable: {e}"))
            }
            // node_network_if_needed reads the file whenever host-local has
            // neither ranges nor subnet; stay an error rather than a panic.
            None => return Err(CniError::config("ipam gives no ranges; set ipam.ranges")),
        }
    }
    let mut range_sets = Vec::new();
    for (set_path, ranges) in &raw_sets {
        let mut set = Vec::new();
        for (j, r) in ranges.iter().enumerate() {
            let at = if set_path == "ipam" { "ipam.".to_string() } else { format!("{set_path}[{j}].") };
            set.push(parse_range(r, &at)?);
        }
        let fam = set[0].subnet.addr().is_ipv4();
        if set.iter().any(|r| r.subnet.addr().is_ipv4() != fam) {
            return Err(CniError::config(format!(
                "{set_path}: mixes IPv4 and IPv6 ranges; put each family in its own range set"
            )));
        }
        range_sets.push(RangeSet { ranges: set });
    }
    // No address may belong to two ranges: the same IP file would then be
    // claimed by two range sets.
    let all: Vec<(String, &Range)> = range_sets
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.ranges.iter().enumerate().map(move |(j, r)| (format!("ipam.ranges[{i}][{j}]"), r)))
        .collect();
    for a in 0..all.len() {
        for b in a + 1..all.len() {
            if all[a].1.overlaps(all[b].1) {
                return Err(CniError::config(format!(
                    "{} ({}) overlaps {} ({}); ranges must not share addresses",
                    all[a].0, all[a].1.subnet, all[b].0, all[b].1.subnet
                )));
            }
        }
    }
    let mut routes = Vec::new();
    match field(v, "routes") {
        None => {}
        Some(Value::Array(rs)) => {
            for (i, r) in rs.iter().enumerate() {
                let at = format!("ipam.routes[{i}]");
                let dst = opt_str(r, &format!("{at}."), "dst")?
                    .ok_or_else(|| CniError::config(format!("{at}.dst is missing; e.g. \"0.0.0.0/0\"")))?;
                let dst = parse_net(&dst, &format!("{at}.dst"))?;
                let gw = opt_str(r, &format!("{at}."), "gw")?.map(|g| parse_ip(&g, &format!("{at}.gw"))).transpose()?;
                if gw.is_some_and(|g| g.is_ipv4() != dst.addr().is_ipv4()) {
                    return Err(CniError::config(format!("{at}: gw and dst are of different IP families")));
                }
                routes.push(RouteConf { dst: dst.trunc(), gw });
            }
        }
        Some(other) => return Err(CniError::config(format!("ipam.routes: expected a list, got {other}"))),
    }
    let data_dir = opt_str(v, "ipam.", "dataDir")?.unwrap_or_else(|| DEFAULT_DATA_DIR.into()).into();
    Ok(Ipam::HostLocal(HostLocal { range_sets, routes, data_dir, ranges_pending }))
}

/// One host-local range with the reference plugin's defaults: the gateway
/// is the first address, the range runs from the first address to the last
/// (IPv4: the one before broadcast), and the gateway is never handed out.
fn parse_range(r: &Value, at: &str) -> Result<Range> {
    if !r.is_object() {
        return Err(CniError::config(format!("{at}: expected an object with a \"subnet\", got {r}")));
    }
    let subnet_s = opt_str(r, at, "subnet")?
        .ok_or_else(|| CniError::config(format!("{at}subnet is missing; e.g. \"10.244.1.0/24\"")))?;
    let subnet = parse_net(&subnet_s, &format!("{at}subnet"))?;
    if subnet.trunc() != subnet {
        return Err(CniError::config(format!(
            "{at}subnet {subnet} has host bits set; write the network address, {}",
            subnet.trunc()
        )));
    }
    let bits = if subnet.addr().is_ipv4() { 32 } else { 128 };
    if subnet.prefix_len() + 2 > bits {
        return Err(CniError::config(format!(
            "{at}subnet {subnet} is too small to allocate from; use at most /{} ",
            bits - 2
        )));
    }
    let within = |key: &str| -> Result<Option<IpAddr>> {
        let Some(s) = opt_str(r, at, key)? else { return Ok(None) };
        let a = parse_ip(&s, &format!("{at}{key}"))?;
        if !subnet.contains(&a) {
            return Err(CniError::config(format!("{at}{key} {a} is outside subnet {subnet}")));
        }
        Ok(Some(a))
    };
    let first = ip::add(subnet.network(), 1);
    let last = if subnet.addr().is_ipv4() { ip::add(subnet.broadcast(), -1) } else { subnet.broadcast() };
    let start = within("rangeStart")?.unwrap_or(first);
    let end = within("rangeEnd")?.unwrap_or(last);
    let gateway = within("gateway")?.unwrap_or(first);
    if ip::to_u128(start) > ip::to_u128(end) {
        return Err(CniError::config(format!("{at}rangeStart {start} is after rangeEnd {end}")));
    }
    Ok(Range { subnet, start, end, gateway })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"cniVersion": "1.1.0", "name": "net", "type": "weir",
               "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]}})
    }

    fn err(v: Value) -> CniError {
        parse_netconf(v).unwrap_err()
    }

    #[test]
    fn defaults_follow_the_reference_host_local() {
        let c = parse_netconf(base()).unwrap();
        let h = c.host_local().unwrap();
        let r = &h.range_sets[0].ranges[0];
        assert_eq!(r.gateway.to_string(), "10.1.0.1");
        assert_eq!(r.start.to_string(), "10.1.0.1");
        assert_eq!(r.end.to_string(), "10.1.0.254");
        assert_eq!(c.bridge, "cni0");
        assert_eq!(h.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(!c.policy.enforce);
    }

    #[test]
    fn ipv6_range_ends_at_the_last_address() {
        let mut v = base();
        v["ipam"]["ranges"] = json!([[{"subnet": "fd00::/120"}]]);
        let c = parse_netconf(v).unwrap();
        assert_eq!(c.host_local().unwrap().range_sets[0].ranges[0].end.to_string(), "fd00::ff");
    }

    #[test]
    fn malformed_json_is_a_decode_error() {
        let e = parse_stdin(b"{\"cniVersion\": ").unwrap_err();
        assert_eq!(e.code, code::DECODE);
        assert!(e.msg.contains("not valid JSON"));
    }

    /// The kernel refuses ':' and takes '%' as a pattern; "." and ".." are
    /// not names. Each used to pass and fail later, a lock file left behind.
    #[test]
    fn interface_names_the_kernel_would_refuse_or_rename_are_rejected_up_front() {
        for bad in ["br:0", "br%d", ".", "..", "a b", "a/b", "", "sixteen-chars-xx", "br\u{7}"] {
            let mut v = base();
            v["bridge"] = json!(bad);
            let e = err(v);
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad:?}");
            assert!(e.msg.starts_with(&format!("bridge {bad:?} is not a valid interface name")), "{}", e.msg);
            let env = |k: &str| match k {
                "CNI_CONTAINERID" => Some("abc".to_string()),
                "CNI_NETNS" => Some("/x".to_string()),
                "CNI_IFNAME" => Some(bad.to_string()),
                _ => None,
            };
            let e = parse_env(Command::Add, env).unwrap_err();
            assert!(e.msg.starts_with("CNI_IFNAME"), "{bad:?}: {}", e.msg);
        }
        for good in ["br.0", "cni0", "eth0.100", "weir-br_1"] {
            let mut v = base();
            v["bridge"] = json!(good);
            assert_eq!(parse_netconf(v).unwrap().bridge, good);
        }
    }

    /// `"ranges": []` once reached a panic (found by the cni_config fuzzer):
    /// ranges present, so the node file was not read, yet no range set given.
    #[test]
    fn an_empty_ranges_list_is_a_config_error_not_a_panic() {
        let mut v = base();
        v["ipam"]["ranges"] = json!([]);
        let e = err(v);
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.starts_with("ipam.ranges is an empty list"), "{}", e.msg);
    }

    #[test]
    fn policy_attach_is_one_of_three_names_and_defaults_to_auto() {
        assert_eq!(parse_netconf(base()).unwrap().policy.attach, weir_bpf::AttachMode::Auto);
        for (name, mode) in
            [("auto", weir_bpf::AttachMode::Auto), ("tcx", weir_bpf::AttachMode::Tcx), ("tc", weir_bpf::AttachMode::Tc)]
        {
            let mut v = base();
            v["policy"] = json!({ "attach": name });
            assert_eq!(parse_netconf(v).unwrap().policy.attach, mode);
        }
        for bad in [json!("TCX"), json!("xdp"), json!(1)] {
            let mut v = base();
            v["policy"] = json!({ "attach": bad });
            let e = err(v);
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(e.msg.starts_with("policy.attach"), "{bad}: {}", e.msg);
        }
    }

    /// "auto" is tc for a pod, unless its egress is shaped (bandwidth's
    /// `ingress` qdisc excludes clsact); an explicit mechanism is kept.
    #[test]
    fn auto_attaches_with_tc_unless_the_pods_egress_is_shaped() {
        use weir_bpf::AttachMode::*;
        let policy = |attach| Policy { attach, ..Policy::default() };
        for (asked, plain, shaped) in [(Auto, Tc, Auto), (Tcx, Tcx, Tcx), (Tc, Tc, Tc)] {
            assert_eq!(policy(asked).attach_for(false), plain, "{asked:?}");
            assert_eq!(policy(asked).attach_for(true), shaped, "{asked:?} shaped");
        }
    }

    fn without_ranges(run_dir: &Path) -> Value {
        json!({"cniVersion": "1.1.0", "name": "net", "type": "weir",
               "ipam": {"type": "host-local"}, "policy": {"runDir": run_dir}})
    }

    #[test]
    fn left_out_ranges_come_from_the_node_network_file_and_explicit_ones_win() {
        let t = tempfile::tempdir().unwrap();
        // Not written yet: parses (DEL and GC need no ranges), ranges pending.
        let c = parse_netconf(without_ranges(t.path())).unwrap();
        let why = c.host_local().unwrap().ranges_pending.clone().unwrap();
        assert!(why.contains(&node_network::path(t.path()).display().to_string()), "{why}");
        assert!(why.contains("ipam.ranges"), "names the way out: {why}");
        NodeNetwork {
            node: "node-2".into(),
            pod_cidrs: vec!["10.88.2.0/24".parse().unwrap(), "fd00:88:2::/64".parse().unwrap()],
            mtu: Some(1450),
        }
        .write(t.path())
        .unwrap();
        let c = parse_netconf(without_ranges(t.path())).unwrap();
        let h = c.host_local().unwrap();
        assert_eq!(h.ranges_pending, None);
        let subnets: Vec<String> = h.range_sets.iter().map(|s| s.ranges[0].subnet.to_string()).collect();
        assert_eq!(subnets, ["10.88.2.0/24", "fd00:88:2::/64"]);
        assert_eq!(h.range_sets[0].ranges[0].gateway.to_string(), "10.88.2.1");
        assert_eq!(c.mtu, Some(1450), "the backend's MTU");
        let mut v = without_ranges(t.path());
        v["mtu"] = json!(1400);
        assert_eq!(parse_netconf(v).unwrap().mtu, Some(1400), "an explicit mtu wins");
        let mut v = without_ranges(t.path());
        v["ipam"]["ranges"] = json!([[{"subnet": "10.1.0.0/24"}]]);
        let c = parse_netconf(v).unwrap();
        assert_eq!(c.host_local().unwrap().range_sets[0].ranges[0].subnet.to_string(), "10.1.0.0/24");
        assert_eq!(c.mtu, Some(1450), "explicit ranges: the node file still gives the backend's MTU");
        let mut v = without_ranges(t.path());
        v["ipam"]["ranges"] = json!([[{"subnet": "10.1.0.0/24"}]]);
        v["mtu"] = json!(1400);
        assert_eq!(parse_netconf(v).unwrap().mtu, Some(1400), "an explicit mtu still wins");
        // A broken file says so; with explicit ranges it costs only the MTU.
        std::fs::write(node_network::path(t.path()), b"{").unwrap();
        let mut v = without_ranges(t.path());
        v["ipam"]["ranges"] = json!([[{"subnet": "10.1.0.0/24"}]]);
        assert_eq!(parse_netconf(v).unwrap().mtu, None);
        let c = parse_netconf(without_ranges(t.path())).unwrap();
        assert!(c.host_local().unwrap().ranges_pending.as_ref().unwrap().contains("not a valid node network file"));
    }

    #[test]
    fn unknown_type_names_the_field() {
        let mut v = base();
        v["type"] = json!("bridgey");
        let e = err(v);
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.starts_with("type \"bridgey\""), "{}", e.msg);
    }

    #[test]
    fn bad_subnet_names_the_field() {
        let mut v = base();
        v["ipam"]["ranges"] = json!([[{"subnet": "10.1.0.0/33"}]]);
        let e = err(v);
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.starts_with("ipam.ranges[0][0].subnet"), "{}", e.msg);
    }

    #[test]
    fn overlapping_ranges_are_rejected() {
        let mut v = base();
        v["ipam"]["ranges"] = json!([[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/16"}]]);
        let e = err(v);
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("ipam.ranges[0][0]") && e.msg.contains("overlaps ipam.ranges[1][0]"), "{}", e.msg);
    }

    #[test]
    fn unsupported_version_is_code_1() {
        let mut v = base();
        v["cniVersion"] = json!("0.2.0");
        assert_eq!(err(v).code, code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn host_bits_and_reversed_ranges_are_rejected() {
        let mut v = base();
        v["ipam"]["ranges"] = json!([[{"subnet": "10.1.0.5/24"}]]);
        assert!(err(v).msg.contains("host bits"));
        let mut v = base();
        v["ipam"]["ranges"] = json!([[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9", "rangeEnd": "10.1.0.3"}]]);
        assert!(err(v).msg.contains("after rangeEnd"));
        let mut v = base();
        v["ipam"]["ranges"] = json!([[{"subnet": "10.1.0.0/24", "gateway": "10.2.0.1"}]]);
        assert!(err(v).msg.contains("ipam.ranges[0][0].gateway 10.2.0.1 is outside"));
    }

    /// Found by fuzz/ (cni_config): "br:-weir" passed here and failed only
    /// when the kernel refused to create the bridge.
    #[test]
    fn bridge_names_the_kernel_refuses_are_rejected() {
        for name in ["br:0", ".", "..", "br\u{0}x"] {
            let mut v = base();
            v["bridge"] = json!(name);
            let e = err(v);
            assert_eq!(e.code, code::INVALID_CONFIG, "{name:?}");
            assert!(e.msg.starts_with("bridge "), "{}", e.msg);
        }
        let mut v = base();
        v["bridge"] = json!("br-weir.1_x");
        assert_eq!(parse_netconf(v).unwrap().bridge, "br-weir.1_x");
    }

    #[test]
    fn other_ipam_types_are_delegated() {
        let mut v = base();
        v["ipam"] = json!({"type": "static"});
        assert_eq!(parse_netconf(v).unwrap().ipam, Ipam::Delegate { plugin: "static".into() });
    }

    #[test]
    fn a_conflist_is_reduced_to_weirs_entry() {
        let v = json!({"cniVersion": "1.0.0", "name": "n", "plugins": [
            {"type": "weir", "ipam": {"subnet": "10.9.0.0/16"}}, {"type": "portmap"}]});
        let c = parse_netconf(v).unwrap();
        assert_eq!(c.name, "n");
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.host_local().unwrap().range_sets[0].ranges[0].subnet.to_string(), "10.9.0.0/16");
    }

    #[test]
    fn env_rules() {
        let get = |m: &'static [(&'static str, &'static str)]| {
            move |k: &str| m.iter().find(|(a, _)| *a == k).map(|(_, v)| v.to_string())
        };
        let e = parse_env(Command::Add, get(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")])).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.starts_with("CNI_NETNS"));
        // DEL needs no netns.
        let env = parse_env(Command::Del, get(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")])).unwrap();
        assert_eq!(env.netns, "");
        let e = parse_env(Command::Del, get(&[("CNI_CONTAINERID", "a/b"), ("CNI_IFNAME", "eth0")])).unwrap_err();
        assert!(e.msg.starts_with("CNI_CONTAINERID"));
        let env = parse_env(
            Command::Add,
            get(&[
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x"),
                ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p"),
                ("CNI_PATH", "/a:/b"),
            ]),
        )
        .unwrap();
        assert_eq!(env.arg("K8S_POD_NAME"), Some("p"));
        assert_eq!(env.path.len(), 2);
        assert_eq!(parse_command(None).unwrap_err().code, code::INVALID_ENV);
    }
}
