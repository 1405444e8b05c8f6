//! The lab commands: up, apply, delete, probe, get, down. Each takes the
//! lab's lock, reads the state, acts, and writes the state back after every
//! step that created something, so `down` can always find what to remove.

use super::cni::{self, Attachment};
use super::naming;
use super::objects::{self, Object, ObjectKind, ObjectRef};
use super::probe::{self, Dest, Matrix, Source};
use super::serve::PortStatus;
use super::services::{self, Allocator, PodView};
use super::state::{Lab, PodRec, State};
use super::sys;
use super::topology::{self, LabNode, Placement};
use crate::table::columns;
use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{HostIP, Pod, PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const SERVICE_CIDR_V4: &str = "10.96.0.0/16";
pub const SERVICE_CIDR_V6: &str = "fd00:96::/108";

#[derive(Debug, Clone)]
pub struct UpOpts {
    pub files: Vec<PathBuf>,
    pub cni_bin_dir: Option<PathBuf>,
    pub policyd_bin: Option<PathBuf>,
    pub no_policy: bool,
    /// The CNI plugin's type (binary name); `weir` unless comparing against
    /// another plugin.
    pub cni_type: String,
    pub quiet: bool,
    /// `--nodes` (1..=16).
    pub nodes: usize,
    /// `--backend` (multi-node labs; default vxlan).
    pub backend: Option<String>,
}

impl Default for UpOpts {
    fn default() -> Self {
        UpOpts {
            files: vec![],
            cni_bin_dir: None,
            policyd_bin: None,
            no_policy: false,
            cni_type: "weir".into(),
            quiet: false,
            nodes: 1,
            backend: None,
        }
    }
}

macro_rules! say {
    ($q:expr, $($arg:tt)*) => { if !$q { outln!($($arg)*); } };
}

fn load_batch(files: &[PathBuf]) -> Result<Vec<Object>> {
    let mut objs = objects::load_paths(files)?;
    for o in &mut objs {
        objects::default_object(o);
    }
    objs.sort_by_key(|o| objects::creation_order(o.kind()));
    let mut seen = std::collections::BTreeSet::new();
    for o in &objs {
        if !seen.insert(o.object_ref()) {
            bail!("{} appears twice in the input; keep one", o.object_ref());
        }
    }
    Ok(objs)
}

fn namespaces_of(objs: &BTreeMap<ObjectRef, Object>) -> Vec<String> {
    objs.keys().filter(|k| k.kind == ObjectKind::Namespace).map(|k| k.name.clone()).collect()
}

fn locate_policyd(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_path_buf());
    }
    let mut cands: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        cands.push(d.join("weir-policyd"));
    }
    cands.push("/usr/local/bin/weir-policyd".into());
    cands.push("/usr/bin/weir-policyd".into());
    cands.into_iter().find(|p| p.is_file())
}

/// Whether this weir-policyd connects nodes (`--backend`): its `--help`
/// says so.
fn policyd_has_backends(bin: &Path) -> bool {
    std::process::Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--backend"))
        .unwrap_or(false)
}

/// Context for creating and destroying pods.
struct Ctx<'a> {
    lab: &'a Lab,
    plugin: PathBuf,
    cni_path: String,
    /// node name -> the node and the network config its runtime uses
    nodes: BTreeMap<String, (LabNode, cni::NetConf)>,
}

impl<'a> Ctx<'a> {
    fn from_state(lab: &'a Lab, st: &State) -> Ctx<'a> {
        let nodes = lab
            .nodes(st.nodes)
            .into_iter()
            .map(|n| {
                let conf = lab.netconf(&n, &st.plugin_type, st.policy, st.backend_running);
                (n.name.clone(), (n, conf))
            })
            .collect();
        Ctx { lab, plugin: st.plugin.clone(), cni_path: st.cni_path.clone(), nodes }
    }

    fn node_of(&self, rec: &PodRec) -> Result<&(LabNode, cni::NetConf)> {
        self.nodes.get(&rec.node).ok_or_else(|| {
            anyhow::anyhow!("pod {} is on node {:?}, which lab {:?} does not have", rec.key(), rec.node, self.lab.name)
        })
    }

    fn attachment(&self, rec: &PodRec) -> Attachment {
        Attachment {
            container_id: rec.container_id.clone(),
            netns: sys::netns_path(&rec.netns),
            ifname: "eth0".into(),
            pod_namespace: rec.namespace.clone(),
            pod_name: rec.name.clone(),
            pod_uid: rec.uid.clone(),
        }
    }

    /// netns, CNI ADD, server. Undoes its own steps when one fails.
    fn create_pod(&self, rec: &mut PodRec, ports: &[(u16, String)]) -> Result<()> {
        sys::netns_del(&rec.netns)?; // a leftover from a crash
        let (node, conf) = self.node_of(rec)?;
        sys::netns_add(&rec.netns)?;
        let att = self.attachment(rec);
        let result = match cni::invoke(&self.plugin, &self.cni_path, &node.netns, "ADD", &att, conf) {
            Ok(r) => r,
            Err(e) => {
                let _ = cni::invoke(&self.plugin, &self.cni_path, &node.netns, "DEL", &att, conf);
                let _ = sys::netns_del(&rec.netns);
                return Err(e);
            }
        };
        rec.added = true;
        rec.ips = cni::result_ips(&result)?;
        match self.start_server(rec, ports) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.destroy_pod(rec);
                Err(e)
            }
        }
    }

    fn start_server(&self, rec: &mut PodRec, ports: &[(u16, String)]) -> Result<()> {
        let status = self.lab.serve_status_path(&rec.netns);
        let _ = std::fs::remove_file(&status);
        std::fs::create_dir_all(self.lab.pods_dir())?;
        std::fs::create_dir_all(self.lab.logs_dir())?;
        let exe = std::env::current_exe().context("locating the weirctl executable")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["lab", "serve", "--netns", &rec.netns, "--status-file"]).arg(&status);
        for (p, proto) in ports {
            cmd.arg("--port").arg(format!("{p}/{proto}"));
        }
        let proc = sys::spawn_daemon(cmd, &self.lab.logs_dir().join(format!("serve-{}.log", rec.netns)))?;
        rec.serve = Some(proc.clone());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(b) = std::fs::read(&status) {
                rec.ports = serde_json::from_slice::<Vec<PortStatus>>(&b)?;
                return Ok(());
            }
            if !proc.alive() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.lab.logs_dir().join(format!("serve-{}.log", rec.netns)))
                    .unwrap_or_default();
                bail!("the server of pod {} did not start: {}", rec.key(), log.trim());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn stop_server(&self, rec: &mut PodRec) {
        if let Some(p) = rec.serve.take() {
            if p.alive() {
                sys::terminate(&[p.pid], Duration::from_secs(1));
            }
        }
    }

    /// Server, CNI DEL, netns: every step tolerant of "already gone".
    fn destroy_pod(&self, rec: &mut PodRec) -> Result<()> {
        self.stop_server(rec);
        let mut err = None;
        match self.node_of(rec) {
            Ok((node, conf)) if sys::netns_exists(&node.netns) && self.plugin.is_file() => {
                if let Err(e) =
                    cni::invoke(&self.plugin, &self.cni_path, &node.netns, "DEL", &self.attachment(rec), conf)
                {
                    err = Some(e);
                }
            }
            Ok(_) => {}
            Err(e) => err = Some(e),
        }
        sys::netns_del(&rec.netns)?;
        let _ = std::fs::remove_file(self.lab.serve_status_path(&rec.netns));
        rec.added = false;
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn new_pod_rec(lab: &Lab, pod: &Pod, node: String) -> PodRec {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod
        .metadata
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| naming::pod_uid(&[&lab.name, &ns, &name, &naming::fresh_seed()]));
    PodRec {
        container_id: naming::container_id(&lab.name, &ns, &name, &uid),
        netns: naming::pod_netns(&lab.name, &ns, &name),
        namespace: ns,
        name,
        uid,
        node,
        added: false,
        ips: vec![],
        serve: None,
        ports: vec![],
    }
}

fn servable_ports(pod: &Pod) -> Vec<(u16, String)> {
    let mut v: Vec<(u16, String)> = objects::pod_ports(pod).into_iter().map(|(p, proto, _)| (p, proto)).collect();
    v.sort();
    v.dedup();
    v
}

/// The Pod as the API server would report it: uid, node, status.
fn pod_with_status(pod: &Pod, rec: &PodRec, nodes: &[LabNode]) -> Pod {
    let mut p = pod.clone();
    p.metadata.uid = Some(rec.uid.clone());
    if let Some(spec) = p.spec.as_mut() {
        spec.node_name = Some(rec.node.clone());
    }
    let ready = rec.ready();
    let host_ips: Vec<IpAddr> =
        nodes.iter().find(|n| n.name == rec.node).map(|n| n.internal_ips.clone()).unwrap_or_default();
    p.status = Some(PodStatus {
        host_ip: host_ips.first().map(|i| i.to_string()),
        host_ips: (!host_ips.is_empty()).then(|| host_ips.iter().map(|i| HostIP { ip: i.to_string() }).collect()),
        phase: Some(if rec.added { "Running" } else { "Pending" }.into()),
        pod_ip: rec.ips.first().map(|i| i.to_string()),
        pod_ips: (!rec.ips.is_empty()).then(|| rec.ips.iter().map(|i| PodIP { ip: i.to_string() }).collect()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    p
}

fn pod_views(objs: &BTreeMap<ObjectRef, Object>, st: &State) -> Vec<PodView> {
    let mut out = Vec::new();
    for o in objs.values() {
        let Object::Pod(p) = o else { continue };
        let key = o.object_ref();
        let Some(rec) = st.pods.get(&format!("{}/{}", key.namespace, key.name)) else { continue };
        if !rec.added {
            continue;
        }
        out.push(PodView {
            namespace: key.namespace,
            name: key.name,
            labels: p.metadata.labels.clone().unwrap_or_default(),
            ips: rec.ips.clone(),
            ports: objects::pod_ports(p),
        });
    }
    out
}

/// Assign ClusterIPs (keeping already-assigned ones) and write Services.
fn admit_service(
    lab: &Lab,
    st: &mut State,
    svc: &k8s_openapi::api::core::v1::Service,
) -> Result<k8s_openapi::api::core::v1::Service> {
    let key =
        format!("{}/{}", svc.metadata.namespace.as_deref().unwrap_or(""), svc.metadata.name.as_deref().unwrap_or(""));
    let mut alloc = Allocator::new(SERVICE_CIDR_V4.parse()?, SERVICE_CIDR_V6.parse()?);
    for (k, ips) in &st.services {
        if *k != key {
            alloc.used.extend(ips.iter().copied());
        }
    }
    let mut s = svc.clone();
    let requested_empty = s
        .spec
        .as_ref()
        .map(|sp| {
            sp.cluster_ip.as_deref().unwrap_or("").is_empty()
                && sp.cluster_ips.as_ref().map(|v| v.is_empty()).unwrap_or(true)
        })
        .unwrap_or(true);
    let ips = match st.services.get(&key) {
        // An update keeps its addresses, as the API server insists.
        Some(existing) if requested_empty && !existing.is_empty() => existing.clone(),
        _ => alloc.assign(&s, &key)?,
    };
    let spec = s.spec.get_or_insert_with(Default::default);
    if spec.type_.is_none() {
        spec.type_ = Some("ClusterIP".into());
    }
    if !ips.is_empty() {
        spec.cluster_ip = Some(ips[0].to_string());
        spec.cluster_ips = Some(ips.iter().map(|i| i.to_string()).collect());
        spec.ip_families = Some(ips.iter().map(|i| if i.is_ipv4() { "IPv4" } else { "IPv6" }.to_string()).collect());
        spec.ip_family_policy.get_or_insert_with(|| "SingleStack".into());
    }
    st.services.insert(key, ips);
    lab.write_object(&Object::Service(s.clone()))?;
    Ok(s)
}

/// Rebuild every node's Service DNAT table from the current objects: like
/// kube-proxy on every node, each table sends a ClusterIP to the backends
/// on any node.
fn program_services(
    lab: &Lab,
    st: &State,
    objs: &BTreeMap<ObjectRef, Object>,
    quiet: bool,
) -> Result<Vec<services::ServiceRule>> {
    let pods = pod_views(objs, st);
    let mut rules = Vec::new();
    for o in objs.values() {
        let Object::Service(s) = o else { continue };
        let key = o.object_ref();
        let ips = st.services.get(&format!("{}/{}", key.namespace, key.name)).cloned().unwrap_or_default();
        if services::selected_pods(s, &pods).is_empty() {
            say!(
                quiet,
                "warning: Service {}/{} selects no running pod; its ClusterIP answers nothing until one matches",
                key.namespace,
                key.name
            );
        }
        rules.extend(services::service_rules(s, &ips, &pods));
    }
    let ruleset = services::nft_ruleset(&rules);
    for node in lab.nodes(st.nodes) {
        sys::run_in(
            &node.netns,
            "nft",
            &["-f", "-"],
            Some(&ruleset),
            &format!("programming Service DNAT rules on node {}", node.name),
        )?;
    }
    Ok(rules)
}

fn fmt_ips(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        "<none>".into()
    } else {
        ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// Where the pods of `batch` go, in batch order (pod objects only), given
/// the pods already running.
fn placements(batch: &[Object], nodes: &[LabNode], st: Option<&State>) -> Result<BTreeMap<String, String>> {
    let mut keys = Vec::new();
    let mut wanted = Vec::new();
    let mut existing: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(st) = st {
        for r in st.pods.values() {
            *existing.entry(r.node.clone()).or_default() += 1;
        }
    }
    for o in batch {
        let Object::Pod(p) = o else { continue };
        let key = format!("{}/{}", o.object_ref().namespace, o.object_ref().name);
        let want = p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
        if let Some(rec) = st.and_then(|st| st.pods.get(&key)) {
            // Already running: it stays where it is, as nodeName is immutable.
            if let Some(w) = want.as_ref().filter(|w| **w != rec.node) {
                bail!("Pod {key}: spec.nodeName {w:?} differs from its node {:?}; nodeName cannot change: delete the pod, then apply it again", rec.node);
            }
            continue;
        }
        keys.push(key);
        wanted.push(want);
    }
    let pods: Vec<Placement> =
        keys.iter().zip(&wanted).map(|(k, w)| Placement { key: k, node_name: w.as_deref() }).collect();
    let nodes_of = topology::place(&pods, nodes, &existing)?;
    Ok(keys.into_iter().zip(nodes_of).collect())
}

/// `weirctl lab up`
pub fn up(lab: &Lab, opts: &UpOpts) -> Result<()> {
    let q = opts.quiet;
    sys::require_root()?;
    let t0 = Instant::now();
    // Input first: a bad manifest or flag must leave everything as it was.
    let nodes = opts.nodes;
    topology::validate(nodes, opts.backend.as_deref())?;
    let batch = load_batch(&opts.files)?;
    objects::validate_batch(&batch, &[])?;
    placements(&batch, &lab.nodes(nodes), None)?;
    let plugin = cni::locate_plugin(opts.cni_bin_dir.as_deref(), &opts.cni_type)?;
    if !opts.no_policy {
        // The pins live on bpffs, which a fresh machine has not mounted.
        if let weir_bpf::bpffs::Mount::Mounted(at) = weir_bpf::bpffs::ensure_mounted_for(&lab.bpffs_root())? {
            say!(q, "[node]     mounted bpffs at {} (nothing was mounted there)", at.display());
        }
    }
    let _lock = lab.lock()?;
    if let Some(st) = lab.load_state().ok().flatten() {
        let nodes_up = lab.nodes(st.nodes).iter().all(|n| sys::netns_exists(&n.netns));
        if st.phase == "ready" && nodes_up && st.policyds_alive() {
            bail!("lab {:?} is already up (state in {}); use `weirctl lab apply` to change it or `weirctl lab down --name {}` first", lab.name, lab.dir.display(), lab.name);
        }
    }
    let traces = lab.traces();
    if !traces.is_empty() {
        say!(q, "recovering: lab {:?} was left half-made ({}); removing it first", lab.name, traces.join(", "));
        let errs = down_inner(lab, true);
        if !errs.is_empty() {
            bail!(
                "could not remove the leftovers of lab {:?}: {}",
                lab.name,
                errs.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("; ")
            );
        }
    }
    match up_inner(lab, opts, plugin, batch, t0) {
        Ok(()) => Ok(()),
        Err(e) => {
            let errs = down_inner(lab, true);
            lab.remove_lock_file();
            let extra = if errs.is_empty() {
                "rolled back".to_string()
            } else {
                format!(
                    "rollback left errors: {}",
                    errs.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("; ")
                )
            };
            Err(e.context(format!("lab up {:?} failed ({extra})", lab.name)))
        }
    }
}

/// A node netns with forwarding and br_netfilter on (the sysctls are per
/// netns).
fn make_node(node: &LabNode) -> Result<()> {
    sys::netns_add(&node.netns)?;
    for (key, val) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.bridge.bridge-nf-call-iptables", "1"),
        ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ] {
        sys::run_in(
            &node.netns,
            "sysctl",
            &["-qw", &format!("{key}={val}")],
            None,
            &format!("setting {key} in netns {}", node.netns),
        )?;
    }
    Ok(())
}

/// The underlay: a bridge in its own netns, each node's `eth0` a veth port
/// of it with the node's InternalIPs.
fn make_underlay(lab: &Lab, nodes: &[LabNode]) -> Result<()> {
    let ul = naming::underlay_netns(&lab.name);
    let mtu = topology::UNDERLAY_MTU.to_string();
    sys::netns_add(&ul)?;
    sys::ip(
        &["-n", &ul, "link", "add", topology::UNDERLAY_BRIDGE, "mtu", &mtu, "type", "bridge"],
        "creating the underlay bridge",
    )?;
    sys::ip(&["-n", &ul, "link", "set", topology::UNDERLAY_BRIDGE, "up"], "bringing the underlay bridge up")?;
    for n in nodes {
        let port = format!("n{}", n.index);
        let what = format!("plugging node {} into the underlay", n.name);
        sys::ip(
            &[
                "-n",
                &n.netns,
                "link",
                "add",
                topology::UNDERLAY_IFACE,
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "mtu",
                &mtu,
                "netns",
                &ul,
            ],
            &what,
        )?;
        sys::ip(&["-n", &ul, "link", "set", &port, "master", topology::UNDERLAY_BRIDGE, "up"], &what)?;
        for a in n.underlay_addrs() {
            // nodad: the lab owns the whole range, and DAD would delay the address.
            let mut args = vec!["-n", &n.netns, "addr", "add", &a, "dev", topology::UNDERLAY_IFACE];
            if a.contains(':') {
                args.push("nodad");
            }
            sys::ip(&args, &what)?;
        }
        sys::ip(&["-n", &n.netns, "link", "set", topology::UNDERLAY_IFACE, "up"], &what)?;
    }
    Ok(())
}

/// Copy what each node's weir-policyd published (its annotations file) into
/// its Node, as the API server would store a kubelet's or agent's update.
/// With `wait`, a node whose file is not there yet is waited for (policyd
/// writes it once its backend is set up).
fn publish_node_annotations(lab: &Lab, st: &State, wait: Option<Duration>) -> Result<()> {
    if !st.backend_running {
        return Ok(());
    }
    let objs = lab.objects()?;
    for node in lab.nodes(st.nodes) {
        let path = node.annotations_path();
        let deadline = wait.map(|w| Instant::now() + w);
        let text = loop {
            match std::fs::read(&path) {
                Ok(t) => break Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
            let Some(deadline) = deadline else { break None };
            let policyd = st.policyds.get(&node.name);
            if Instant::now() > deadline || !policyd.is_some_and(|p| p.alive()) {
                bail!(
                    "weir-policyd of node {} did not publish its node annotations ({}) within {:?}{}; its log ends: {}",
                    node.name,
                    path.display(),
                    wait.unwrap_or_default(),
                    if policyd.is_some_and(|p| p.alive()) { "" } else { " (it exited)" },
                    log_tail(&node.policyd_log, 8)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let Some(text) = text else { continue };
        let published = topology::parse_annotations(&text, &path)?;
        let key = objects::object_ref(ObjectKind::Node, "", &node.name);
        let Some(Object::Node(current)) = objs.get(&key) else {
            bail!("the Node object of {} is missing from {}", node.name, lab.manifests_dir().display())
        };
        if let Some(updated) = topology::merge_annotations(current, &published) {
            lab.write_object(&Object::Node(updated))?;
        }
    }
    Ok(())
}

fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

fn up_inner(lab: &Lab, opts: &UpOpts, plugin: PathBuf, batch: Vec<Object>, t0: Instant) -> Result<()> {
    let q = opts.quiet;
    let count = opts.nodes;
    let backend = topology::validate(count, opts.backend.as_deref())?;
    let nodes = lab.nodes(count);
    for d in [lab.dir.clone(), lab.manifests_dir(), lab.logs_dir(), lab.pods_dir()]
        .into_iter()
        .chain(nodes.iter().flat_map(|n| [n.run_dir.clone(), n.ipam_dir.clone()]))
    {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let policyd_bin = if opts.no_policy { None } else { locate_policyd(opts.policyd_bin.as_deref()) };
    let policy = policyd_bin.is_some();
    let backend_running = backend.is_some() && policyd_bin.as_deref().is_some_and(policyd_has_backends);
    let cni_dir = plugin.parent().map(|p| p.display().to_string()).unwrap_or_default();
    let mut st = State {
        name: lab.name.clone(),
        phase: "starting".into(),
        policy,
        plugin: plugin.clone(),
        cni_path: format!("{cni_dir}:/opt/cni/bin:/usr/lib/cni"),
        plugin_type: opts.cni_type.clone(),
        nodes: count,
        backend: backend.map(|b| b.as_str().to_string()),
        backend_running,
        policyds: BTreeMap::new(),
        policyd_bin: policyd_bin.clone(),
        pods: BTreeMap::new(),
        services: BTreeMap::new(),
    };
    lab.save_state(&st)?;

    // 1. nodes (and the underlay between them)
    for node in &nodes {
        make_node(node)?;
        let conf = lab.netconf(node, &opts.cni_type, policy, backend_running);
        std::fs::write(&node.conflist_path, serde_json::to_vec_pretty(&conf.conflist())?)?;
    }
    if let Some(b) = backend {
        make_underlay(lab, &nodes)?;
        say!(
            q,
            "[nodes]    {} nodes (netns {}-n1..n{count}) on underlay {} (netns {}): {}",
            count,
            naming::node_netns(&lab.name),
            topology::UNDERLAY_BRIDGE,
            naming::underlay_netns(&lab.name),
            nodes
                .iter()
                .map(|n| format!(
                    "{} {} pods {}",
                    n.name,
                    fmt_ips(&n.internal_ips),
                    n.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        if !backend_running {
            say!(
                q,
                "[nodes]    warning: {}; the nodes get no routes to each other's pods (backend {} not running): traffic between nodes will not flow",
                if policy { "weir-policyd has no --backend flag" } else { "no weir-policyd" },
                b.as_str()
            );
        }
    }
    say!(
        q,
        "[node]     {}: ip_forward=1, bridge-nf-call-iptables=1 (cni0 comes with the first pod); CNI plugin {}",
        nodes.iter().map(|n| format!("netns {}", n.netns)).collect::<Vec<_>>().join(", "),
        plugin.display()
    );

    // 2. the API: manifests everyone reads
    if backend.is_some() {
        for n in &nodes {
            lab.write_object(&Object::Node(n.node_object()))?;
        }
    }
    let placed = placements(&batch, &nodes, None)?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut pods = Vec::new();
    for o in &batch {
        *counts.entry(o.kind().to_string()).or_default() += 1;
        match o {
            Object::Service(s) => {
                admit_service(lab, &mut st, s)?;
            }
            Object::Pod(p) => pods.push(p.clone()),
            other => lab.write_object(other)?,
        }
    }
    let mut recs = Vec::new();
    for p in &pods {
        let key =
            format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or(""), p.metadata.name.as_deref().unwrap_or(""));
        let rec = new_pod_rec(lab, p, placed[&key].clone());
        lab.write_object(&Object::Pod(pod_with_status(p, &rec, &nodes)))?;
        st.pods.insert(rec.key(), rec.clone());
        recs.push((p.clone(), rec));
    }
    lab.save_state(&st)?;
    say!(
        q,
        "[api]      {} -> {}",
        if counts.is_empty() {
            "no objects".to_string()
        } else {
            counts.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
        },
        lab.manifests_dir().display()
    );

    // 3. policy daemons, one per node
    if let Some(bin) = &policyd_bin {
        for node in &nodes {
            let mut cmd = sys::command_in(&node.netns, bin)?;
            cmd.arg("--manifests")
                .arg(lab.manifests_dir())
                .args(["--node-name", &node.name])
                .arg("--bpffs-root")
                .arg(&node.bpffs_root)
                .arg("--run-dir")
                .arg(&node.run_dir);
            if let (true, Some(b)) = (backend_running, backend) {
                cmd.args(["--backend", b.as_str()]);
            }
            let proc = sys::spawn_daemon(cmd, &node.policyd_log)?;
            say!(
                q,
                "[policy]   weir-policyd pid {} ({}){}, log {}",
                proc.pid,
                bin.display(),
                if nodes.len() > 1 { format!(" on {}", node.name) } else { String::new() },
                node.policyd_log.display()
            );
            st.policyds.insert(node.name.clone(), proc);
            lab.save_state(&st)?;
        }
        publish_node_annotations(lab, &st, Some(Duration::from_secs(10)))?;
    } else if opts.no_policy {
        say!(q, "[policy]   OFF (--no-policy): no weir-policyd, the CNI plugin runs without enforcement; every probe connects");
    } else {
        say!(q, "[policy]   OFF: weir-policyd not found (next to weirctl, /usr/local/bin, /usr/bin; or --policyd-bin); the CNI plugin runs without enforcement");
    }

    // 4. pods
    let ctx = Ctx::from_state(lab, &st);
    let created = create_pods(&ctx, recs, q);
    let mut first_err = None;
    for r in created {
        match r {
            Ok((pod, rec)) => {
                lab.write_object(&Object::Pod(pod_with_status(&pod, &rec, &nodes)))?;
                st.pods.insert(rec.key(), rec);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    lab.save_state(&st)?;
    if let Some(e) = first_err {
        for node in &nodes {
            if let Some(p) = st.policyds.get(&node.name).filter(|p| !p.alive()) {
                return Err(e.context(format!(
                    "weir-policyd (pid {}) of node {} exited; its log ends: {}",
                    p.pid,
                    node.name,
                    log_tail(&node.policyd_log, 8)
                )));
            }
        }
        return Err(e);
    }

    // 5. services
    let objs = lab.objects()?;
    let rules = program_services(lab, &st, &objs, q)?;
    let nsvc = st.services.len();
    say!(
        q,
        "[services] {nsvc} Service(s), {} DNAT rule(s) (nft table inet {}) in {}",
        rules.len(),
        services::TABLE,
        nodes.iter().map(|n| n.netns.as_str()).collect::<Vec<_>>().join(", ")
    );

    st.phase = "ready".into();
    lab.save_state(&st)?;
    say!(
        q,
        "ready: lab {:?} with {} pod(s), {} Service(s) in {:.2} s; policy {}",
        lab.name,
        st.pods.len(),
        nsvc,
        t0.elapsed().as_secs_f64(),
        if policy { "enforced" } else { "OFF" }
    );
    if !q && !st.pods.is_empty() {
        out!("{}", pods_table(&st, &objs));
    }
    Ok(())
}

type Created = Result<(Pod, PodRec)>;

/// The first pod of each node alone (its ADD creates the node's bridge),
/// the rest in parallel as a runtime starting many pods would.
fn create_pods(ctx: &Ctx, recs: Vec<(Pod, PodRec)>, q: bool) -> Vec<Created> {
    let one = |(pod, mut rec): (Pod, PodRec)| -> Created {
        let t = Instant::now();
        ctx.create_pod(&mut rec, &servable_ports(&pod)).with_context(|| format!("creating pod {}", rec.key()))?;
        let unsupported: Vec<String> = rec
            .ports
            .iter()
            .filter(|p| p.state != "serving")
            .map(|p| format!("{}/{} {}", p.port, p.protocol, p.state))
            .collect();
        let on = if ctx.nodes.len() > 1 { format!(" on {}", rec.node) } else { String::new() };
        say!(
            q,
            "[pod]      {:<16} {:<28} ready in {:>4} ms{on}{}",
            rec.key(),
            fmt_ips(&rec.ips),
            t.elapsed().as_millis(),
            if unsupported.is_empty() { String::new() } else { format!(" ({})", unsupported.join(", ")) }
        );
        Ok((pod, rec))
    };
    let mut seen = std::collections::BTreeSet::new();
    let (firsts, rest): (Vec<_>, Vec<_>) = recs.into_iter().partition(|(_, r)| seen.insert(r.node.clone()));
    let mut out: Vec<Created> = firsts.into_iter().map(one).collect();
    std::thread::scope(|s| {
        let hs: Vec<_> = rest.into_iter().map(|r| s.spawn(|| one(r))).collect();
        for h in hs {
            out.push(h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a pod creation thread panicked"))));
        }
    });
    out
}

/// Remove everything of the lab; keeps going past errors and returns them.
pub fn down_inner(lab: &Lab, quiet: bool) -> Vec<anyhow::Error> {
    let mut errs = Vec::new();
    let st = match lab.load_state() {
        Ok(s) => s,
        Err(e) => {
            errs.push(e);
            None
        }
    };
    if let Some(st) = &st {
        let ctx = Ctx::from_state(lab, st);
        // Servers first, then DEL (which needs the node netns), in parallel.
        let mut recs: Vec<PodRec> = st.pods.values().cloned().collect();
        std::thread::scope(|s| {
            let hs: Vec<_> = recs
                .iter_mut()
                .map(|r| s.spawn(|| ctx.destroy_pod(r).with_context(|| format!("removing pod {}", r.key()))))
                .collect();
            for h in hs {
                if let Ok(Err(e)) = h.join() {
                    errs.push(e);
                }
            }
        });
        say!(quiet, "[down]     {} pod(s) removed (server stopped, CNI DEL, netns deleted)", st.pods.len());
    }
    let pids = sys::procs_mentioning(&lab.dir);
    if !pids.is_empty() {
        sys::terminate(&pids, Duration::from_secs(2));
        say!(quiet, "[down]     stopped process(es) {:?}", pids);
    }
    // Every node and the underlay, found by name: also those a crash left
    // without a state file.
    let netns = lab.node_netns_present();
    for n in &netns {
        if let Err(e) = sys::netns_del(n) {
            errs.push(e);
        }
    }
    let root = lab.bpffs_root();
    if root.exists() {
        if let Err(e) = std::fs::remove_dir_all(&root) {
            errs.push(anyhow::anyhow!("removing pins under {}: {e}", root.display()));
        }
    }
    if lab.dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&lab.dir) {
            errs.push(anyhow::anyhow!("removing {}: {e}", lab.dir.display()));
        }
    }
    let shown = if netns.is_empty() { naming::node_netns(&lab.name) } else { netns.join(", ") };
    say!(quiet, "[down]     netns {shown}, pins {}, state {} removed", root.display(), lab.dir.display());
    errs
}

/// `weirctl lab down`
pub fn down(lab: &Lab, quiet: bool) -> Result<()> {
    sys::require_root()?;
    let _lock = lab.lock()?;
    if lab.traces().is_empty() {
        lab.remove_lock_file();
        bail!(
            "no lab named {:?} (nothing under {}, no netns {}); nothing to remove",
            lab.name,
            lab.dir.display(),
            naming::node_netns(&lab.name)
        );
    }
    let errs = down_inner(lab, quiet);
    let left = lab.traces();
    lab.remove_lock_file();
    if !errs.is_empty() || !left.is_empty() {
        bail!(
            "lab {:?} not fully removed: {}{}",
            lab.name,
            errs.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("; "),
            if left.is_empty() { String::new() } else { format!("; still present: {}", left.join(", ")) }
        );
    }
    say!(quiet, "lab {:?} is down", lab.name);
    Ok(())
}

/// `weirctl lab apply`
pub fn apply(lab: &Lab, files: &[PathBuf], quiet: bool) -> Result<()> {
    sys::require_root()?;
    let batch = load_batch(files)?;
    let _lock = lab.lock()?;
    let mut st = lab.require_state()?;
    let objs = lab.objects()?;
    objects::validate_batch(&batch, &namespaces_of(&objs))?;
    let nodes = lab.nodes(st.nodes);
    let placed = placements(&batch, &nodes, Some(&st))?;
    publish_node_annotations(lab, &st, None)?;
    let ctx = Ctx::from_state(lab, &st);
    let mut services_dirty = false;
    for o in &batch {
        let key = o.object_ref();
        let verb = match objs.get(&key) {
            None => "created",
            Some(old) if same_object(old, o) => "unchanged",
            Some(_) => "configured",
        };
        match o {
            Object::Service(s) => {
                admit_service(lab, &mut st, s)?;
                services_dirty = true;
            }
            Object::Pod(p) => {
                let k = format!("{}/{}", key.namespace, key.name);
                if let Some(mut rec) = st.pods.get(&k).cloned().filter(|r| r.added) {
                    // Labels (or other metadata) changed: the manifest is the
                    // whole change, as a label edit never re-runs CNI.
                    let old_ports = objs
                        .get(&key)
                        .and_then(|o| if let Object::Pod(op) = o { Some(servable_ports(op)) } else { None })
                        .unwrap_or_default();
                    if old_ports != servable_ports(p) {
                        ctx.stop_server(&mut rec);
                        ctx.start_server(&mut rec, &servable_ports(p))?;
                    }
                    lab.write_object(&Object::Pod(pod_with_status(p, &rec, &nodes)))?;
                    st.pods.insert(k, rec);
                } else {
                    let rec = new_pod_rec(lab, p, placed[&k].clone());
                    lab.write_object(&Object::Pod(pod_with_status(p, &rec, &nodes)))?;
                    st.pods.insert(k.clone(), rec.clone());
                    lab.save_state(&st)?;
                    let (pod, rec) = match create_pods(&ctx, vec![(p.clone(), rec)], true).pop().expect("one result") {
                        Ok(created) => created,
                        Err(e) => {
                            // create_pod undid its own steps; undo the API side too
                            st.pods.remove(&k);
                            lab.remove_object(&key)?;
                            lab.save_state(&st)?;
                            return Err(e);
                        }
                    };
                    lab.write_object(&Object::Pod(pod_with_status(&pod, &rec, &nodes)))?;
                    st.pods.insert(k, rec);
                }
                services_dirty = true;
            }
            other => lab.write_object(other)?,
        }
        lab.save_state(&st)?;
        say!(
            quiet,
            "{}/{} {verb}",
            key.kind.label(),
            if key.namespace.is_empty() { key.name.clone() } else { format!("{}/{}", key.namespace, key.name) }
        );
    }
    if services_dirty {
        program_services(lab, &st, &lab.objects()?, quiet)?;
    }
    Ok(())
}

/// Equal ignoring what the lab itself fills in (uid, status, clusterIP).
fn same_object(stored: &Object, new: &Object) -> bool {
    let strip = |o: &Object| {
        let mut v = o.to_json();
        v.as_object_mut().map(|m| m.remove("status"));
        if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            m.remove("uid");
        }
        if let Some(spec) = v.get_mut("spec").and_then(|m| m.as_object_mut()) {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "nodeName", "type"] {
                spec.remove(f);
            }
        }
        v
    };
    strip(stored) == strip(new)
}

/// `weirctl lab delete`
pub fn delete(lab: &Lab, files: &[PathBuf], quiet: bool) -> Result<()> {
    sys::require_root()?;
    let batch = load_batch(files)?;
    let _lock = lab.lock()?;
    let mut st = lab.require_state()?;
    let objs = lab.objects()?;
    let ctx = Ctx::from_state(lab, &st);
    let mut missing = Vec::new();
    let mut services_dirty = false;
    // Reverse creation order: pods before the namespace they live in.
    for o in batch.iter().rev() {
        let key = o.object_ref();
        if !objs.contains_key(&key) && !lab.objects()?.contains_key(&key) {
            missing.push(key.to_string());
            continue;
        }
        let mut victims: Vec<ObjectRef> = vec![key.clone()];
        if key.kind == ObjectKind::Namespace {
            // Like the namespace controller: everything inside goes too.
            let mut inside: Vec<ObjectRef> = lab
                .objects()?
                .into_keys()
                .filter(|k| k.kind != ObjectKind::Namespace && k.namespace == key.name)
                .collect();
            inside.sort_by_key(|k| std::cmp::Reverse(objects::creation_order(k.kind)));
            inside.push(key.clone());
            victims = inside;
        }
        for v in victims {
            if v.kind == ObjectKind::Pod {
                if let Some(mut rec) = st.pods.remove(&format!("{}/{}", v.namespace, v.name)) {
                    ctx.destroy_pod(&mut rec).with_context(|| format!("deleting pod {}/{}", v.namespace, v.name))?;
                }
                services_dirty = true;
            }
            if v.kind == ObjectKind::Service {
                st.services.remove(&format!("{}/{}", v.namespace, v.name));
                services_dirty = true;
            }
            lab.remove_object(&v)?;
            lab.save_state(&st)?;
            say!(
                quiet,
                "{}/{} deleted",
                v.kind.label(),
                if v.namespace.is_empty() { v.name.clone() } else { format!("{}/{}", v.namespace, v.name) }
            );
        }
    }
    if services_dirty {
        program_services(lab, &st, &lab.objects()?, quiet)?;
    }
    if !missing.is_empty() {
        bail!("not found in lab {:?}: {}", lab.name, missing.join(", "));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct ProbeOpts {
    pub port: u16,
    pub protocol: String,
    pub via_service: bool,
    pub timeout: Duration,
    pub from: Option<String>,
    pub to: Option<String>,
    pub ipv6: bool,
}

/// `weirctl lab probe`: the matrix.
pub fn probe(lab: &Lab, o: &ProbeOpts) -> Result<Matrix> {
    sys::require_root()?;
    let st = lab.require_state()?;
    for node in lab.nodes(st.nodes) {
        if let Some(p) = st.policyds.get(&node.name).filter(|p| st.policy && !p.alive()) {
            eprintln!(
                "warning: weir-policyd (pid {}) of lab {:?} node {} is not running: verdicts come from the last programmed state; see {}",
                p.pid,
                lab.name,
                node.name,
                node.policyd_log.display()
            );
        }
    }
    let objs = lab.objects()?;
    let keys: Vec<String> = st.pods.keys().cloned().collect();
    for (flag, v) in [("--from", &o.from), ("--to", &o.to)] {
        if let Some(k) = v {
            if !st.pods.contains_key(k) {
                bail!("{flag} {k}: no such pod in lab {:?} (pods: {})", lab.name, keys.join(", "));
            }
        }
    }
    // (namespace, name) order, which is not the order of the "ns/name"
    // strings when a namespace name is a prefix of another ("x" vs "x-1").
    let pick = |f: &Option<String>| -> Vec<&PodRec> {
        let mut v: Vec<&PodRec> = st
            .pods
            .values()
            .filter(|r| f.as_ref().map(|k| *k == r.key()).unwrap_or(true))
            .filter(|r| r.added)
            .collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    };
    let sources: Vec<Source> =
        pick(&o.from).into_iter().map(|r| Source { key: r.key(), netns: r.netns.clone() }).collect();
    let views = pod_views(&objs, &st);
    let mut dests = Vec::new();
    let mut lacking = Vec::new();
    for r in pick(&o.to) {
        let target = if o.via_service {
            service_target(&objs, &st, &views, r, o.port, &o.protocol, o.ipv6)
        } else {
            r.ips
                .iter()
                .find(|i| i.is_ipv6() == o.ipv6)
                .map(|ip| SocketAddr::new(*ip, o.port))
                .ok_or_else(|| format!("pod {} has no {} address", r.key(), if o.ipv6 { "IPv6" } else { "IPv4" }))
        };
        if target.is_err() {
            lacking.push(r.key());
        }
        dests.push(Dest { key: r.key(), target });
    }
    if !lacking.is_empty() && o.protocol != "SCTP" {
        let how = if o.via_service {
            format!(
                "no Service selecting only that pod exposes {}/{}{}; apply one (the model names it s-<ns>-<pod>) or probe with --via pod",
                o.port,
                o.protocol,
                if o.ipv6 { " with an IPv6 ClusterIP" } else { "" }
            )
        } else {
            format!("no {} address", if o.ipv6 { "IPv6" } else { "IPv4" })
        };
        bail!("cannot probe pod(s) {}: {how}", lacking.join(", "));
    }
    Ok(probe::run(&sources, &dests, o.port, &o.protocol, if o.via_service { "service" } else { "pod" }, o.timeout))
}

/// `weirctl lab exec NS/POD -- CMD...`: run CMD in the pod's network
/// namespace (only the network: the file system and processes are the
/// machine's), stdio passed through; its exit code, 128+signal if killed.
pub fn exec(lab: &Lab, pod: &str, argv: &[String]) -> Result<i32> {
    sys::require_root()?;
    let st = lab.require_state()?;
    let Some(rec) = st.pods.get(pod).filter(|r| r.added) else {
        bail!(
            "no running pod {pod:?} in lab {:?} (pods: {}); name it as NAMESPACE/NAME",
            lab.name,
            st.pods.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let Some((program, args)) = argv.split_first() else {
        bail!("no command to run: `weirctl lab exec {pod} -- CMD [ARGS...]`");
    };
    let status = sys::command_in(&rec.netns, program)?
        .args(args)
        .status()
        .with_context(|| format!("running {program:?} in pod {pod} (netns {})", rec.netns))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The ClusterIP:port of the Service that selects only pod `r` and exposes
/// `port`/`protocol` (preferring the model's name `s-<ns>-<pod>`).
fn service_target(
    objs: &BTreeMap<ObjectRef, Object>,
    st: &State,
    views: &[PodView],
    r: &PodRec,
    port: u16,
    protocol: &str,
    ipv6: bool,
) -> std::result::Result<SocketAddr, String> {
    let no_ips = Vec::new();
    let services = objs.iter().filter_map(|(k, o)| match o {
        Object::Service(s) => {
            Some((s, st.services.get(&format!("{}/{}", k.namespace, k.name)).unwrap_or(&no_ips).as_slice()))
        }
        _ => None,
    });
    services::probe_target(services, views, (&r.namespace, &r.name), port, protocol, ipv6)
        .map(|t| SocketAddr::new(t.vip, t.port))
}

pub fn pods_table(st: &State, objs: &BTreeMap<ObjectRef, Object>) -> String {
    let mut rows = vec![["NAMESPACE", "NAME", "READY", "NODE", "IPS", "LABELS"].map(String::from).to_vec()];
    let mut recs: Vec<&PodRec> = st.pods.values().collect();
    recs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for r in recs {
        let labels = objs
            .get(&objects::object_ref(ObjectKind::Pod, &r.namespace, &r.name))
            .and_then(|o| o.meta().labels.clone())
            .map(|l| l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        rows.push(vec![
            r.namespace.clone(),
            r.name.clone(),
            if r.ready() { "1/1" } else { "0/1" }.into(),
            r.node.clone(),
            fmt_ips(&r.ips),
            labels,
        ]);
    }
    columns(&rows)
}

/// A selector's matchLabels as `k=v,...`; `<all>` when it has none (its
/// matchExpressions are not shown).
fn match_labels_text(sel: Option<&LabelSelector>) -> String {
    sel.and_then(|s| s.match_labels.as_ref())
        .map(|l| l.iter().map(|(a, b)| format!("{a}={b}")).collect::<Vec<_>>().join(","))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<all>".into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetWhat {
    Pods,
    Services,
    Policies,
    Nodes,
}

/// The lab's Nodes: a multi-node lab's from its API (with what their
/// weir-policyds published), the one-node lab's made up on the spot (it
/// never writes one: its weir-policyd runs as it always did).
fn node_objects(lab: &Lab, st: &State, objs: &BTreeMap<ObjectRef, Object>) -> Vec<k8s_openapi::api::core::v1::Node> {
    lab.nodes(st.nodes)
        .iter()
        .map(|n| match objs.get(&objects::object_ref(ObjectKind::Node, "", &n.name)) {
            Some(Object::Node(stored)) => stored.clone(),
            _ => n.node_object(),
        })
        .collect()
}

fn nodes_table(st: &State, nodes: &[k8s_openapi::api::core::v1::Node]) -> String {
    let mut rows = vec![["NAME", "INTERNAL-IPS", "POD-CIDRS", "BACKEND", "PODS"].map(String::from).to_vec()];
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let ips: Vec<String> = n
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address.clone())
            .collect();
        let cidrs = n.spec.as_ref().and_then(|s| s.pod_cidrs.clone()).unwrap_or_default().join(",");
        let backend = n
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("weir.io/backend-type").cloned())
            .or_else(|| st.backend.clone().map(|b| format!("{b} (not running)")))
            .unwrap_or_else(|| "<none>".into());
        let pods = st.pods.values().filter(|r| r.node == name).count();
        rows.push(vec![
            name,
            if ips.is_empty() { "<none>".into() } else { ips.join(",") },
            cidrs,
            backend,
            pods.to_string(),
        ]);
    }
    columns(&rows)
}

/// `weirctl lab get`
pub fn get(lab: &Lab, what: GetWhat, json: bool) -> Result<String> {
    let st = lab.require_state()?;
    let objs = lab.objects()?;
    let nodes = lab.nodes(st.nodes);
    if json {
        let mut items = Vec::new();
        if what == GetWhat::Nodes {
            items = node_objects(lab, &st, &objs).into_iter().map(serde_json::to_value).collect::<Result<_, _>>()?;
        }
        for o in objs.values() {
            match (what, o) {
                (GetWhat::Pods, Object::Pod(p)) => {
                    let k = o.object_ref();
                    match st.pods.get(&format!("{}/{}", k.namespace, k.name)) {
                        Some(rec) => items.push(serde_json::to_value(pod_with_status(p, rec, &nodes))?),
                        None => items.push(o.to_json()),
                    }
                }
                (GetWhat::Services, Object::Service(_))
                | (GetWhat::Policies, Object::NetworkPolicy(_) | Object::ClusterNetworkPolicy(_)) => {
                    items.push(o.to_json())
                }
                _ => {}
            }
        }
        return Ok(serde_json::to_string_pretty(
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}),
        )? + "\n");
    }
    Ok(match what {
        GetWhat::Pods => pods_table(&st, &objs),
        GetWhat::Services => {
            let views = pod_views(&objs, &st);
            let mut rows = vec![["NAMESPACE", "NAME", "CLUSTER-IPS", "PORTS", "ENDPOINTS"].map(String::from).to_vec()];
            for o in objs.values() {
                let Object::Service(s) = o else { continue };
                let k = o.object_ref();
                let ips = st.services.get(&format!("{}/{}", k.namespace, k.name)).cloned().unwrap_or_default();
                let ports = s
                    .spec
                    .iter()
                    .flat_map(|sp| sp.ports.iter().flatten())
                    .map(|p| format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")))
                    .collect::<Vec<_>>()
                    .join(",");
                let eps = services::selected_pods(s, &views)
                    .iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect::<Vec<_>>()
                    .join(",");
                rows.push(vec![
                    k.namespace,
                    k.name,
                    fmt_ips(&ips),
                    ports,
                    if eps.is_empty() { "<none>".into() } else { eps },
                ]);
            }
            columns(&rows)
        }
        GetWhat::Nodes => nodes_table(&st, &node_objects(lab, &st, &objs)),
        GetWhat::Policies => {
            let mut rows =
                vec![["NAMESPACE", "NAME", "POD-SELECTOR", "POLICY-TYPES", "MODE"].map(String::from).to_vec()];
            let mut cluster =
                vec![["CLUSTER-POLICY", "TIER", "PRIORITY", "SUBJECT", "RULES"].map(String::from).to_vec()];
            for o in objs.values() {
                let k = o.object_ref();
                match o {
                    Object::NetworkPolicy(np) => {
                        let spec = np.spec.clone().unwrap_or_default();
                        let sel = match_labels_text(spec.pod_selector.as_ref());
                        let types = spec.policy_types.clone().unwrap_or_else(|| vec!["Ingress".into()]).join(",");
                        let mode = weir_policyd::engine::policy::mode_annotation(np).unwrap_or("enforce").to_string();
                        rows.push(vec![k.namespace, k.name, sel, types, mode]);
                    }
                    Object::ClusterNetworkPolicy(cnp) => {
                        let s = &cnp.spec;
                        let subject = match (&s.subject.namespaces, &s.subject.pods) {
                            (Some(ns), _) => format!("namespaces {}", match_labels_text(Some(ns))),
                            (None, Some(p)) => format!(
                                "pods {} in namespaces {}",
                                match_labels_text(Some(&p.pod_selector)),
                                match_labels_text(Some(&p.namespace_selector))
                            ),
                            (None, None) => "<none>".into(),
                        };
                        let rules = format!("{} ingress, {} egress", s.ingress.len(), s.egress.len());
                        cluster.push(vec![k.name, s.tier.clone(), s.priority.to_string(), subject, rules]);
                    }
                    _ => {}
                }
            }
            let mut out = columns(&rows);
            if cluster.len() > 1 {
                out.push('\n');
                out.push_str(&columns(&cluster));
            }
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_object_ignores_what_the_lab_fills_in() {
        let a = objects::parse_text("apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec: {selector: {pod: a}, ports: [{port: 80}]}\n", "t").unwrap().remove(0);
        let Object::Service(mut s) = a.clone() else { panic!() };
        s.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.10".into());
        assert!(same_object(&Object::Service(s.clone()), &a));
        s.spec.as_mut().unwrap().selector = Some([("pod".to_string(), "b".to_string())].into());
        assert!(!same_object(&Object::Service(s), &a));
    }

    #[test]
    fn pod_status_is_what_kubectl_shows() {
        let Object::Pod(p) = objects::parse_text(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\n",
            "t",
        )
        .unwrap()
        .remove(0) else {
            panic!()
        };
        let lab = Lab::new("unit").unwrap();
        let mut rec = new_pod_rec(&lab, &p, "lab".into());
        assert_eq!(rec.netns, "weir-unit-x-a");
        assert_eq!(rec.container_id.len(), 64);
        let one = lab.nodes(1);
        let pending = serde_json::to_value(pod_with_status(&p, &rec, &one)).unwrap();
        assert_eq!(pending["status"]["phase"], "Pending");
        assert!(pending["status"].get("podIP").is_none());
        rec.added = true;
        rec.ips = vec!["10.88.0.5".parse().unwrap(), "fd00:88::5".parse().unwrap()];
        let v = serde_json::to_value(pod_with_status(&p, &rec, &one)).unwrap();
        assert_eq!(v["status"]["phase"], "Running");
        assert_eq!(v["status"]["podIP"], "10.88.0.5");
        assert_eq!(v["status"]["podIPs"], serde_json::json!([{"ip": "10.88.0.5"}, {"ip": "fd00:88::5"}]));
        assert_eq!(v["spec"]["nodeName"], "lab");
        assert_eq!(v["metadata"]["uid"], rec.uid.as_str());
        // no server process: not Ready yet
        assert_eq!(v["status"]["conditions"][0]["status"], "False");
        // a new incarnation of the same pod gets a new container ID
        assert_ne!(new_pod_rec(&lab, &p, "lab".into()).container_id, rec.container_id);
        // the one-node lab's node has no address: no hostIP, as before
        assert!(v["status"].get("hostIP").is_none());
        // on a multi-node lab: the pod's node and that node's InternalIPs
        let two = lab.nodes(2);
        rec.node = "node-2".into();
        let v = serde_json::to_value(pod_with_status(&p, &rec, &two)).unwrap();
        assert_eq!(v["spec"]["nodeName"], "node-2");
        assert_eq!(v["status"]["hostIP"], "192.0.2.2");
        assert_eq!(v["status"]["hostIPs"], serde_json::json!([{"ip": "192.0.2.2"}, {"ip": "2001:db8:88::2"}]));
    }

    #[test]
    fn service_target_needs_a_service_selecting_only_that_pod() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s-x-a, namespace: x}\nspec: {selector: {pod: a}, ports: [{port: 80}]}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: all, namespace: x}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: x}\nspec: {selector: {pod: a}, ports: [{port: 80}]}\n";
        let objs: BTreeMap<ObjectRef, Object> =
            objects::parse_text(text, "t").unwrap().into_iter().map(|o| (o.object_ref(), o)).collect();
        let mut st = State {
            name: "u".into(),
            phase: "ready".into(),
            policy: false,
            plugin: "/nonexistent".into(),
            cni_path: String::new(),
            plugin_type: "weir".into(),
            nodes: 1,
            backend: None,
            backend_running: false,
            policyds: BTreeMap::new(),
            policyd_bin: None,
            pods: BTreeMap::new(),
            services: BTreeMap::new(),
        };
        st.services.insert("x/s-x-a".into(), vec!["10.96.0.10".parse().unwrap(), "fd00:96::a".parse().unwrap()]);
        st.services.insert("x/all".into(), vec!["10.96.0.11".parse().unwrap()]);
        st.services.insert("x/other".into(), vec!["10.96.0.12".parse().unwrap()]);
        let view = |name: &str| PodView {
            namespace: "x".into(),
            name: name.into(),
            labels: [("pod".to_string(), name.to_string()), ("app".to_string(), "web".to_string())].into(),
            ips: vec!["10.88.0.2".parse().unwrap()],
            ports: vec![],
        };
        let views = vec![view("a"), view("b")];
        let rec = |name: &str| PodRec {
            namespace: "x".into(),
            name: name.into(),
            uid: "u".into(),
            container_id: "c".into(),
            netns: "n".into(),
            node: "lab".into(),
            added: true,
            ips: vec![],
            serve: None,
            ports: vec![],
        };
        // the model's name wins over another single-pod Service
        assert_eq!(
            service_target(&objs, &st, &views, &rec("a"), 80, "TCP", false).unwrap(),
            "10.96.0.10:80".parse().unwrap()
        );
        assert_eq!(
            service_target(&objs, &st, &views, &rec("a"), 80, "TCP", true).unwrap(),
            "[fd00:96::a]:80".parse().unwrap()
        );
        // wrong port or protocol: none
        assert!(service_target(&objs, &st, &views, &rec("a"), 81, "TCP", false).is_err());
        assert!(service_target(&objs, &st, &views, &rec("a"), 80, "UDP", false).is_err());
        // b is only behind `all`, which selects two pods: never used
        assert!(service_target(&objs, &st, &views, &rec("b"), 80, "TCP", false).unwrap_err().contains("x/b"));
    }
}
