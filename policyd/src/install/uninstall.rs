//! `weir-policyd uninstall`: everything Weir put on this node taken away,
//! so that another CNI (or none) finds the node as it was before Weir.
//!
//! First a check that removes nothing: no pod may still use Weir here (an
//! endpoint record, or an entry in the pinned endpoints map) and
//! weir-policyd must not be running (it would put its pins back); `--force`
//! goes on anyway. Then the steps of [`ORDER`], each one idempotent
//! (already gone is success), stopping at the first that fails: each step
//! may assume the ones before it are done, so a node stopped part way is
//! still usable, and a re-run carries on from there. The conflist goes
//! first (the runtime stops using Weir), the install record last (it says
//! what is left to remove after the conflist is gone).

use super::conflist;
use super::files;
use super::record::{Network, Record};
use crate::node::annotations;
use crate::node::netlink as node_nl;
use crate::source::kube::Access;
use anyhow::{anyhow, Context};
use k8s_openapi::api::core::v1::Node;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use weir_cni::config::PLUGIN_TYPE;
use weir_common::netlink::Netlink;
use weir_common::registry::Registry;

#[derive(Debug, Clone)]
pub struct Options {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// Go on while pods still use Weir (or weir-policyd runs).
    pub force: bool,
    /// Leave the kernel alone (programs, routes, devices, nftables) and the
    /// API: an install under a prefix, which never ran on this host.
    pub files_only: bool,
    /// This node's Node, to take Weir's annotations off; None without API
    /// access (they are then left, and the report says how to remove them).
    pub node: Option<(Access, String)>,
    /// Where the network keeps its state, when given: else the conflist's
    /// while it is there, else the install record's, else the shipped
    /// conflist's.
    pub places: Places,
    /// Where the host's `/` is (a container's mount): every place above,
    /// given or configured, is then a host path, reached under it.
    pub host_root: Option<PathBuf>,
}

/// Places given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Places {
    pub bpffs_root: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    pub ipam_data_dir: Option<PathBuf>,
}

/// One uninstall step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The conflist: the runtime stops calling Weir for new pods.
    Conflist,
    /// The binaries install-cni wrote (the record's; never the host's own).
    Binaries,
    /// leave_node, and the pod programs of anything still attached.
    Programs,
    /// Routes marked RTPROT_WEIR.
    Routes,
    /// The VXLAN device weir-policyd made (`weir.<VNI>`).
    VxlanDevice,
    /// The network's bridge, if Weir made it and no port is left on it.
    Bridge,
    /// The masquerade table (`inet weir`).
    Masquerade,
    /// The host-local store of Weir's network.
    IpamStore,
    /// The whole bpffs root of Weir.
    Pins,
    /// The run dir (endpoint records, node network file, heartbeat, socket).
    RunDir,
    /// Weir's `weir.io/*` annotations on this node's Node.
    Annotations,
    /// The install record.
    Record,
}

/// The order the steps run in. The conflist first: with it gone the
/// runtime starts no pod on Weir, so nothing after it can break a new pod.
/// The pins and the run dir late: until then the in-use check of a re-run
/// still sees any pod. The record last: a re-run needs it to know which
/// binaries were Weir's and where the network kept its state.
pub const ORDER: [Step; 12] = [
    Step::Conflist,
    Step::Binaries,
    Step::Programs,
    Step::Routes,
    Step::VxlanDevice,
    Step::Bridge,
    Step::Masquerade,
    Step::IpamStore,
    Step::Pins,
    Step::RunDir,
    Step::Annotations,
    Step::Record,
];

impl Step {
    /// Whether the step acts on the kernel or the API rather than on files.
    pub fn beyond_files(self) -> bool {
        matches!(
            self,
            Step::Programs | Step::Routes | Step::VxlanDevice | Step::Bridge | Step::Masquerade | Step::Annotations
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::Conflist => "conflist",
            Step::Binaries => "CNI binaries",
            Step::Programs => "attached programs",
            Step::Routes => "routes",
            Step::VxlanDevice => "VXLAN device",
            Step::Bridge => "bridge",
            Step::Masquerade => "masquerade table",
            Step::IpamStore => "IPAM store",
            Step::Pins => "pins",
            Step::RunDir => "run dir",
            Step::Annotations => "Node annotations",
            Step::Record => "install record",
        }
    }
}

/// Why an uninstall did not finish.
#[derive(Debug)]
pub enum Failure {
    /// Refused before anything was removed.
    Refused(String),
    /// Stopped at `step`, after removing `done`.
    Stopped { step: Step, error: anyhow::Error, done: Vec<String> },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(why) => write!(f, "{why}"),
            Failure::Stopped { step, error, .. } => write!(
                f,
                "{}: {error:#}; stopped there (the lines above were removed, nothing after this step was \
                 touched): fix this and run uninstall again, it carries on from here",
                step.name()
            ),
        }
    }
}

/// What this node's Weir install is made of.
struct Installed {
    /// The CNI directories, as this run reaches them.
    bin_dir: PathBuf,
    conflist: PathBuf,
    /// What the conflist held (None: not there), to put back when an ADD
    /// turns out to have raced the uninstall.
    conflist_bytes: Option<Vec<u8>>,
    /// The install record, or (an install from before records) one made
    /// up: the shipped network, no chained binaries; with the conflist's
    /// places while it is there. What a re-run needs, so it is saved before
    /// the conflist goes.
    record: Record,
    /// Where this run acts: the record's places, or those given.
    network: Network,
}

/// What was removed (and what was left, and why), one line each, handed
/// on as it happens: a step that hangs or kills the process leaves the
/// lines before it said.
struct Done<'a> {
    lines: Vec<String>,
    on_line: &'a mut dyn FnMut(&str),
}

impl Done<'_> {
    fn push(&mut self, line: String) {
        (self.on_line)(&line);
        self.lines.push(line);
    }
    fn extend(&mut self, lines: impl IntoIterator<Item = String>) {
        lines.into_iter().for_each(|l| self.push(l));
    }
}

/// Uninstall, handing each line of what it does to `on_line` as it
/// happens; returns them all.
pub async fn run(opts: &Options, on_line: &mut dyn FnMut(&str)) -> Result<Vec<String>, Failure> {
    let refuse = |e: anyhow::Error| Failure::Refused(format!("{e:#}; nothing was removed"));
    let installed = installed(opts).map_err(refuse)?;
    let users = users(&installed.network);
    if !users.is_empty() && !opts.force {
        return Err(Failure::Refused(refusal(&users)));
    }
    let mut done = Done { lines: Vec::new(), on_line };
    for (n, u) in users.iter().enumerate() {
        if n == 0 {
            done.push("--force: going on although Weir is in use here:".to_string());
        }
        done.push(format!("  {u}"));
    }
    let reserved = reservations(&installed.network);
    // Held from the last look for users until the IPAM store is gone.
    let mut ipam_lock = None;
    for step in ORDER.into_iter().filter(|s| !(opts.files_only && s.beyond_files())) {
        match run_step(step, opts, &installed).await {
            Ok(lines) => done.extend(lines),
            Err(error) => return Err(Failure::Stopped { step, error, done: done.lines }),
        }
        match step {
            Step::Conflist => {
                let (lock, raced) = look_again(&installed.network, &users, &reserved)
                    .map_err(|error| Failure::Stopped { step, error, done: std::mem::take(&mut done.lines) })?;
                ipam_lock = lock;
                if !raced.is_empty() && !opts.force {
                    return Err(put_back(&installed, &raced));
                }
                done.extend(raced.iter().map(|u| format!("--force: going on although {u}")));
            }
            Step::IpamStore => ipam_lock = None,
            _ => {}
        }
    }
    drop(ipam_lock);
    Ok(done.lines)
}

/// The reservations in the network's host-local store: (address, container).
fn reservations(network: &Network) -> Vec<(std::net::IpAddr, String)> {
    let Some(dir) = network.ipam_store() else { return vec![] };
    weir_cni::ipam::disk::entries_in(&dir).0.into_iter().map(|e| (e.ip, e.container_id)).collect()
}

/// Once the conflist is gone the runtime starts no ADD, but one that read
/// the conflist before may still be running. Under the locks ADD takes (the
/// IPAM store's, then the bpffs root's), look for users again: an ADD that
/// got either lock before is done with it and shows (a reservation, an
/// endpoint record or map entry); one waiting for the IPAM lock finds the
/// store gone from under it and fails. Returns the IPAM store's lock, to be
/// held until that store is removed, and the users that appeared.
fn look_again(
    network: &Network,
    before: &[String],
    reserved: &[(std::net::IpAddr, String)],
) -> anyhow::Result<(Option<weir_cni::ipam::disk::DiskStore>, Vec<String>)> {
    // No store yet: no ADD has reserved anything (one making it now will
    // see it removed at the IPAM store step).
    let ipam_lock = match network.ipam_store() {
        Some(dir) if dir.is_dir() => Some(
            weir_cni::ipam::disk::DiskStore::open(&dir).map_err(|e| anyhow!("taking the IPAM store's lock: {e}"))?,
        ),
        _ => None,
    };
    let root_lock = match network.bpffs_root.is_dir() {
        true => Some(weir_bpf::RootLock::take(&network.bpffs_root).context("taking the bpffs root's lock")?),
        false => None,
    };
    let mut raced: Vec<String> = users(network).into_iter().filter(|u| !before.contains(u)).collect();
    drop(root_lock);
    for (ip, container) in reservations(network) {
        if !reserved.contains(&(ip, container.clone())) {
            raced.push(format!("a pod being added: container {container} reserved {ip} in the IPAM store"));
        }
    }
    Ok((ipam_lock, raced))
}

/// The conflist back as it was (a pod was added meanwhile), and the refusal.
fn put_back(installed: &Installed, raced: &[String]) -> Failure {
    let restored = match &installed.conflist_bytes {
        Some(bytes) => {
            let mut staged = files::Staged::default();
            staged
                .add(&installed.conflist, bytes, 0o644)
                .and_then(|()| staged.commit().map(|_| ()))
                .map(|()| format!("{} is back", installed.conflist.display()))
                .unwrap_or_else(|e| {
                    format!("putting {} back failed ({e:#}): run install-cni", installed.conflist.display())
                })
        }
        None => "the conflist was already gone".to_string(),
    };
    let mut s =
        refusal(raced).replacen("nothing was removed", &format!("a pod was added while uninstall ran; {restored}"), 1);
    s.push_str(" Only the conflist was taken away meanwhile, and the install record written.");
    Failure::Refused(s)
}

/// The record, with the network's places taken from the conflist while it
/// is there (it is what the CNI binary used), else from the record, else
/// the shipped conflist's.
fn installed(opts: &Options) -> anyhow::Result<Installed> {
    let host = |place: &Path, what: &str| on_host(opts.host_root.as_deref(), place, what);
    let bin_dir = host(&opts.bin_dir, "--bin-dir")?;
    let conflist = host(&opts.conf_dir, "--conf-dir")?.join(conflist::FILE_NAME);
    let conflist_bytes = match std::fs::read(&conflist) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow!("{}: {e}", conflist.display())),
    };
    let from_conflist = match &conflist_bytes {
        Some(b) => {
            let bad = |e: String| anyhow!("{}: {e}; fix it, or remove it and run uninstall again", conflist.display());
            let v = serde_json::from_slice(b).map_err(|e| bad(e.to_string()))?;
            Some(Network::of(&weir_cni::config::parse_netconf(v).map_err(|e| bad(e.to_string()))?))
        }
        None => None,
    };
    let mut record =
        Record::read(&bin_dir)?.unwrap_or_else(|| Record { binaries: Default::default(), network: Network::shipped() });
    if let Some(n) = from_conflist {
        record.network = n;
    }
    // Given places are where this run finds them, not what the node uses:
    // the record keeps the node's.
    let given = &opts.places;
    let mut network = record.network.clone();
    network.bpffs_root = given.bpffs_root.clone().unwrap_or(network.bpffs_root);
    network.run_dir = given.run_dir.clone().unwrap_or(network.run_dir);
    network.ipam_data_dir = given.ipam_data_dir.clone().or(network.ipam_data_dir);
    check_removable(&network.bpffs_root, "bpffs root")?;
    check_removable(&network.run_dir, "run dir")?;
    if let Some(store) = network.ipam_store() {
        check_removable(&store, "IPAM store")?;
    }
    network.bpffs_root = host(&network.bpffs_root, "bpffs root")?;
    network.run_dir = host(&network.run_dir, "run dir")?;
    if let Some(d) = &network.ipam_data_dir {
        network.ipam_data_dir = Some(host(d, "IPAM data dir")?);
    }
    // Where this run reaches them may be a mount of its own (a hostPath
    // volume of the host's /run at <host root>/run).
    let store = network.ipam_store();
    for (place, what) in [(Some(&network.bpffs_root), "bpffs root"), (Some(&network.run_dir), "run dir")]
        .into_iter()
        .chain([(store.as_ref(), "IPAM store")])
    {
        if let Some(place) = place.filter(|p| is_mount_point(p).unwrap_or(false)) {
            return Err(not_weirs_alone(place, what));
        }
    }
    Ok(Installed { bin_dir, conflist, conflist_bytes, record, network })
}

/// `place`, a host path, as this run reaches it: under `host_root` when
/// given. Refused when it cannot be reached there: its parent is not
/// there (not mounted under `host_root`), or leads out of `host_root` (a
/// symlink of the host's, such as /var/run -> /run, read in this
/// container, would reach the container's own).
pub fn on_host(host_root: Option<&Path>, place: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let Some(root) = host_root else { return Ok(place.to_path_buf()) };
    let unreachable = |why: String| {
        anyhow!(
            "{what} {}: not reachable under --host-root {} ({why}); mount the host's directory holding it \
             there, at the same path below {}",
            place.display(),
            root.display(),
            root.display()
        )
    };
    let relative = place.strip_prefix("/").map_err(|_| unreachable("not an absolute path".into()))?;
    let mapped = root.join(relative);
    let parent = mapped.parent().unwrap_or(&mapped);
    let real_root = root.canonicalize().map_err(|e| unreachable(format!("{}: {e}", root.display())))?;
    let real_parent = parent.canonicalize().map_err(|e| unreachable(format!("{}: {e}", parent.display())))?;
    if !real_parent.starts_with(&real_root) {
        return Err(unreachable(format!("{} leads to {}", parent.display(), real_parent.display())));
    }
    Ok(mapped)
}

/// Who still uses Weir on this node, one line each: pods (endpoint
/// records, endpoint map entries) and a running weir-policyd.
fn users(network: &Network) -> Vec<String> {
    let mut users = Vec::new();
    let registry = Registry::under(&network.run_dir);
    let (records, errors) = registry.list();
    let mut known = Vec::new();
    for r in &records {
        known.push(r.host_ifindex);
        users.push(format!(
            "pod {}/{} (container {}, interface {}): its endpoint record is in {}",
            r.pod_namespace,
            r.pod_name,
            r.container_id,
            r.ifname,
            registry.dir().display()
        ));
    }
    users.extend(errors.iter().map(|e| format!("an endpoint record that cannot be read: {e}")));
    let endpoints_map = network.bpffs_root.join(weir_bpf::abi::MAP_ENDPOINTS);
    if endpoints_map.exists() {
        match weir_bpf::pinned_endpoint_ifindexes(&network.bpffs_root) {
            Ok(eps) => users.extend(eps.iter().filter(|i| !known.contains(i)).map(|i| {
                format!("the pod interface of ifindex {i}: its entry is in the pinned {}", endpoints_map.display())
            })),
            Err(e) => users.push(format!("perhaps pods: the pinned endpoints map cannot be read ({e})")),
        }
    }
    let heartbeat = network.run_dir.join(weir_common::paths::POLICYD_HEARTBEAT);
    if let Some(age) = age(&heartbeat).filter(|a| *a < weir_common::paths::POLICYD_HEARTBEAT_MAX_AGE) {
        users.push(format!(
            "weir-policyd: it is still running (it touched {} {} s ago) and would put its pins back; delete its \
             DaemonSet first (kubectl delete -f conf/weir.yaml) or stop it",
            heartbeat.display(),
            age.as_secs()
        ));
    }
    users
}

fn age(path: &Path) -> Option<std::time::Duration> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(SystemTime::now().duration_since(m).unwrap_or_default())
}

/// The refusal: who uses Weir, and what to do about it.
pub fn refusal(users: &[String]) -> String {
    let mut s = String::from("Weir is still in use on this node; nothing was removed:\n");
    for u in users {
        s.push_str(&format!("  - {u}\n"));
    }
    s.push_str(
        "Remove those first: delete weir-policyd's DaemonSet, then drain the node (kubectl drain NODE \
         --ignore-daemonsets), delete the DaemonSets that use the pod network (deleting only their pods \
         brings them back), wait until their sandboxes are gone, and run uninstall again. --force removes everything anyway: pods still running \
         keep their interfaces and addresses, but their NetworkPolicies are no longer enforced, their traffic \
         to other nodes and masquerade to outside the cluster stop, the runtime's DEL of them fails (the weir \
         binary is gone), and their addresses may be handed out again by the next CNI.",
    );
    s
}

async fn run_step(step: Step, opts: &Options, installed: &Installed) -> anyhow::Result<Vec<String>> {
    let network = &installed.network;
    match step {
        Step::Conflist => remove_conflist(installed),
        Step::Binaries => remove_binaries(&installed.bin_dir, &installed.record),
        Step::Programs => detach_programs(&network.bpffs_root),
        Step::Routes => remove_routes(),
        Step::VxlanDevice => remove_vxlan_devices(),
        Step::Bridge => remove_bridge(network.bridge.as_deref()),
        Step::Masquerade => match weir_cni::masq::remove_table().context("removing the masquerade table")? {
            true => Ok(vec![format!("removed nftables table inet {} (masquerade)", weir_cni::masq::TABLE)]),
            false => Ok(vec![]),
        },
        Step::IpamStore => match network.ipam_store() {
            Some(dir) => remove_weirs(&dir, "IPAM store", is_ipam_store_entry),
            None => Ok(vec![]),
        },
        Step::Pins => remove_weirs(&network.bpffs_root, "pins", weir_bpf::is_weirs_root_entry),
        Step::RunDir => remove_weirs(&network.run_dir, "run dir", is_run_dir_entry),
        Step::Annotations => remove_annotations(opts.node.as_ref()).await,
        Step::Record => {
            let path = Record::path(&installed.bin_dir);
            Ok(remove_file(&path)?.then(|| format!("removed {}", path.display())).into_iter().collect())
        }
    }
}

/// The record first takes the conflist's places (for a re-run once the
/// conflist is gone), then the conflist goes.
fn remove_conflist(installed: &Installed) -> anyhow::Result<Vec<String>> {
    if !installed.conflist.exists() {
        return Ok(vec![]);
    }
    if installed.bin_dir.is_dir() {
        let mut staged = files::Staged::default();
        staged.add(&Record::path(&installed.bin_dir), &installed.record.to_bytes(), 0o644)?;
        staged.commit()?;
    }
    remove_file(&installed.conflist)?;
    Ok(vec![format!("removed {}", installed.conflist.display())])
}

/// What Weir may remove from the CNI bin dir, given what is there now:
/// `weir` itself (no one else ships it), and each binary of the record
/// that still holds exactly what Weir wrote. Returns (to remove, left with
/// the reason).
pub fn weirs_binaries(record: &Record, present: &[(String, Vec<u8>)]) -> (Vec<String>, Vec<(String, String)>) {
    let (mut remove, mut left) = (Vec::new(), Vec::new());
    for (name, body) in present {
        if name == PLUGIN_TYPE || record.wrote(name, body) {
            remove.push(name.clone());
        } else if record.binaries.contains_key(name) {
            left.push((name.clone(), "changed since Weir installed it: another package's now".to_string()));
        }
    }
    (remove, left)
}

fn remove_binaries(bin_dir: &Path, record: &Record) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<&str> = record.binaries.keys().map(String::as_str).collect();
    if !names.contains(&PLUGIN_TYPE) {
        names.push(PLUGIN_TYPE);
    }
    let mut present = Vec::new();
    for name in names {
        let path = bin_dir.join(name);
        match std::fs::read(&path) {
            Ok(body) => present.push((name.to_string(), body)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow!("{}: {e}", path.display())),
        }
    }
    let (remove, left) = weirs_binaries(record, &present);
    let mut lines = Vec::new();
    for name in remove {
        let path = bin_dir.join(&name);
        if remove_file(&path)? {
            lines.push(format!("removed {}", path.display()));
        }
    }
    for (name, why) in left {
        lines.push(format!("left {}: {why}", bin_dir.join(name).display()));
    }
    Ok(lines)
}

/// leave_node, and anything still attached to pod interfaces (DEL's
/// leftovers, or running pods under --force). TCX links would go with
/// their pins anyway; tc filters live with the device, so they are taken
/// off here. By the link pins and tc records alone, no map opened: a root
/// of another build's ABI, or one a stopped run half removed, is detached
/// too. What cannot be is said, and left.
fn detach_programs(root: &Path) -> anyhow::Result<Vec<String>> {
    if !root.is_dir() {
        return Ok(vec![]);
    }
    let (detached, left) = weir_bpf::detach_all(root)?;
    let mut lines: Vec<String> =
        detached.iter().map(|(i, hook)| format!("detached {} from ifindex {i}", hook.name())).collect();
    lines.extend(left.iter().map(|(i, hook, e)| format!("left {} on ifindex {i}: {e}", hook.name())));
    Ok(lines)
}

fn remove_routes() -> anyhow::Result<Vec<String>> {
    let mut nl = Netlink::new().context("netlink socket")?;
    let mut lines = Vec::new();
    for r in node_nl::weir_routes(&mut nl).context("listing routes")? {
        node_nl::del_route(&mut nl, &r).with_context(|| format!("removing route {} via {}", r.dst, r.gw))?;
        lines.push(format!("removed route {} via {} (proto {})", r.dst, r.gw, node_nl::RTPROT_WEIR));
    }
    Ok(lines)
}

/// VXLAN devices named as weir-policyd names its own (`weir.<VNI>`) whose
/// VNI is that number; nobody else's.
fn remove_vxlan_devices() -> anyhow::Result<Vec<String>> {
    let mut nl = Netlink::new().context("netlink socket")?;
    let mut lines = Vec::new();
    for l in nl.links().context("listing links")? {
        let Some(vni) = crate::node::Config::vni_of_device(&l.name) else { continue };
        let Ok(Some(v)) = node_nl::vxlan_link(&mut nl, &l.name) else { continue };
        if v.vni == Some(vni) {
            nl.delete_link(v.index).with_context(|| format!("removing VXLAN device {}", l.name))?;
            lines.push(format!("removed VXLAN device {}", l.name));
        }
    }
    Ok(lines)
}

/// The network's bridge, with its gateway addresses and routes, when Weir
/// made it and no interface is on it any more (under --force a running
/// pod's still is: then it stays, so the pod keeps its neighbours).
fn remove_bridge(name: Option<&str>) -> anyhow::Result<Vec<String>> {
    let Some(name) = name else { return Ok(vec![]) };
    let mut nl = Netlink::new().context("netlink socket")?;
    let links = nl.links().context("listing links")?;
    let Some(bridge) = links.iter().find(|l| l.name == name && weir_cni::bridge::is_weirs(l)) else {
        return Ok(vec![]);
    };
    let ports = links.iter().filter(|l| l.master == Some(bridge.index)).count();
    if ports > 0 {
        return Ok(vec![format!("left bridge {name}: {ports} interface(s) still on it")]);
    }
    nl.delete_link(bridge.index).with_context(|| format!("removing bridge {name}"))?;
    Ok(vec![format!("removed bridge {name}")])
}

/// The `weir.io/*` annotations on this node's Node, removed with a JSON
/// merge patch setting each to null.
async fn remove_annotations(node: Option<&(Access, String)>) -> anyhow::Result<Vec<String>> {
    let Some((access, name)) = node else {
        return Ok(vec![format!(
            "left this node's {}* annotations (no API access: pass --in-cluster or --kubeconfig with \
             --node-name); remove them with: kubectl annotate node NODE {}- {}- {}-",
            annotations::PREFIX,
            annotations::BACKEND_TYPE,
            annotations::BACKEND_DATA,
            annotations::PUBLIC_IP
        )]);
    };
    let client = crate::source::kube::client(access).await?;
    let nodes: kube::Api<Node> = kube::Api::all(client);
    let Some(n) = nodes.get_opt(name).await.with_context(|| format!("reading Node {name}"))? else {
        return Ok(vec![]);
    };
    let patch = annotations_removal(n.metadata.annotations.as_ref());
    let Some(patch) = patch else { return Ok(vec![]) };
    nodes
        .patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch.0))
        .await
        .with_context(|| format!("patching Node {name}'s annotations"))?;
    Ok(patch.1.iter().map(|k| format!("removed annotation {k} from Node {name}")).collect())
}

/// The merge patch that removes every `weir.io/` annotation of `current`,
/// and their names; None when there is none.
pub fn annotations_removal(
    current: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<(serde_json::Value, Vec<String>)> {
    let keys: Vec<String> =
        current.into_iter().flatten().map(|(k, _)| k).filter(|k| k.starts_with(annotations::PREFIX)).cloned().collect();
    if keys.is_empty() {
        return None;
    }
    let nulls: serde_json::Map<String, serde_json::Value> =
        keys.iter().map(|k| (k.clone(), serde_json::Value::Null)).collect();
    Some((serde_json::json!({ "metadata": { "annotations": nulls } }), keys))
}

/// Remove a file; whether it was there.
fn remove_file(path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(anyhow!("removing {}: {e}", path.display())),
    }
}

/// What Weir writes directly in its run dir (the CNI binary and
/// weir-policyd), each name from where its writer defines it.
pub fn is_run_dir_entry(name: &str) -> bool {
    use weir_common::paths::{ENDPOINTS_SUBDIR, POLICYD_API_SOCKET, POLICYD_FLOW_LOG, POLICYD_HEARTBEAT};
    let exact = [
        ENDPOINTS_SUBDIR,
        POLICYD_HEARTBEAT,
        POLICYD_API_SOCKET,
        POLICYD_FLOW_LOG,
        weir_common::node_network::FILE,
        crate::node::publish::ANNOTATIONS_FILE,
        crate::source::dir::LAST_GOOD_DIR,
        crate::daemon::IDENTITIES_FILE,
        weir_cni::masq::STAMP_SUBDIR,
        weir_cni::ipam::INDEX_SUBDIR,
        weir_cni::bridge::LOCKS_SUBDIR,
    ];
    let rotated_flow_log = crate::flows::rotated(Path::new(POLICYD_FLOW_LOG));
    // The API socket is bound under a temporary name, then renamed.
    let api_socket_staged = name
        .strip_prefix(POLICYD_API_SOCKET)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|rest| rest.ends_with(".tmp"));
    exact.contains(&name) || Path::new(name) == rotated_flow_log || api_socket_staged
}

/// What host-local writes in a network's store: a file per reserved
/// address, the last address handed out per range set, the lock.
pub fn is_ipam_store_entry(name: &str) -> bool {
    use weir_cni::ipam::disk::{LAST_PREFIX, LOCK_FILE};
    name.parse::<std::net::IpAddr>().is_ok() || name == LOCK_FILE || name.starts_with(LAST_PREFIX)
}

/// A directory Weir's state is kept in, as configured, before anything is
/// removed from it: not a mount point (the whole of a filesystem, say
/// `/run` or `/sys/fs/bpf`, is never only Weir's) and at least two levels
/// deep.
pub fn check_removable(dir: &Path, what: &str) -> anyhow::Result<()> {
    use std::path::Component;
    let normal = dir.components().filter(|c| matches!(c, Component::Normal(_))).count();
    let climbs = dir.components().any(|c| matches!(c, Component::ParentDir));
    if !dir.is_absolute() || normal < 2 || climbs {
        return Err(anyhow!(
            "{what} {}: not a directory of Weir's own (give an absolute path two or more levels deep, with no \
             `..`, such as the shipped conflist's); fix the conflist or the install record",
            dir.display()
        ));
    }
    if is_mount_point(dir)? {
        return Err(not_weirs_alone(dir, what));
    }
    Ok(())
}

fn not_weirs_alone(dir: &Path, what: &str) -> anyhow::Error {
    anyhow!(
        "{what} {}: a mount point, so not Weir's alone (it may hold other programs' files); point the conflist \
         at a directory of Weir's own below it",
        dir.display()
    )
}

/// Whether `dir` is where a filesystem is mounted (per this process's
/// mount table; a missing `dir` is not).
fn is_mount_point(dir: &Path) -> anyhow::Result<bool> {
    let Ok(dir) = dir.canonicalize() else { return Ok(false) };
    let table = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(table.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| Path::new(&unescape_mount_path(m)) == dir))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok());
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The entries of `dir` that `is_weirs` names, then `dir` itself when
/// nothing else is left in it; anything else stays, and is reported.
fn remove_weirs(dir: &Path, what: &str, is_weirs: fn(&str) -> bool) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(anyhow!("listing {}: {e}", dir.display())),
    };
    check_removable(dir, what)?;
    let mut foreign = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_weirs(&name) {
            foreign.push(name);
            continue;
        }
        let path = e.path();
        let is_dir = e.file_type().with_context(|| format!("{}", path.display()))?.is_dir();
        let removed = if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match removed {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(anyhow!("removing {}: {err}", path.display()))
            }
            _ => {}
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        return Ok(vec![format!(
            "left {what} {}: not empty, it holds what is not Weir's: {}",
            dir.display(),
            foreign.join(", ")
        )]);
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(vec![format!("removed {what} {}", dir.display())]),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(anyhow!("removing {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::record::digest;
    use std::collections::BTreeMap;

    fn pos(s: Step) -> usize {
        ORDER.iter().position(|x| *x == s).unwrap()
    }

    #[test]
    fn the_runtime_stops_using_weir_first_and_the_record_goes_last() {
        assert_eq!(ORDER[0], Step::Conflist);
        assert_eq!(ORDER[ORDER.len() - 1], Step::Record);
        // Programs come off before the device and pins they hang on go.
        assert!(pos(Step::Programs) < pos(Step::VxlanDevice) && pos(Step::Programs) < pos(Step::Pins));
        // A re-run's in-use check reads the pins and the run dir.
        assert!(pos(Step::Pins) < pos(Step::RunDir));
        let mut names: Vec<&str> = ORDER.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ORDER.len(), "every step once");
    }

    #[test]
    fn only_weir_and_what_weir_wrote_unchanged_are_weirs() {
        let mut record = Record { binaries: BTreeMap::new(), network: Network::shipped() };
        record.binaries.insert("weir".into(), digest(b"weir v1"));
        record.binaries.insert("portmap".into(), digest(b"weir's portmap"));
        record.binaries.insert("loopback".into(), digest(b"weir's loopback"));
        let present = vec![
            // a newer weir (install.sh copied one by hand): still Weir's
            ("weir".to_string(), b"weir v2".to_vec()),
            ("portmap".to_string(), b"weir's portmap".to_vec()),
            // replaced by the host's package since
            ("loopback".to_string(), b"the host's loopback".to_vec()),
            // never Weir's
            ("bandwidth".to_string(), b"the host's bandwidth".to_vec()),
        ];
        let (remove, left) = weirs_binaries(&record, &present);
        assert_eq!(remove, ["weir", "portmap"]);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, "loopback");
        assert!(left[0].1.contains("another package's"), "{}", left[0].1);
    }

    #[test]
    fn the_annotation_patch_nulls_weirs_and_nothing_else() {
        assert!(annotations_removal(None).is_none());
        let mut a = BTreeMap::new();
        a.insert("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string());
        assert!(annotations_removal(Some(&a)).is_none());
        a.insert(annotations::BACKEND_TYPE.to_string(), "vxlan".to_string());
        a.insert(annotations::PUBLIC_IP.to_string(), "192.0.2.1".to_string());
        let (patch, keys) = annotations_removal(Some(&a)).unwrap();
        assert_eq!(keys, [annotations::BACKEND_TYPE, annotations::PUBLIC_IP]);
        assert_eq!(
            patch,
            serde_json::json!({"metadata": {"annotations": {"weir.io/backend-type": null, "weir.io/public-ip": null}}})
        );
    }

    #[test]
    fn weirs_entries_are_known_by_their_writers_names() {
        for n in ["endpoints", "policyd.heartbeat", "api.sock", "api.sock.42.tmp", "flows.log", "flows.log.1"] {
            assert!(is_run_dir_entry(n), "{n}");
        }
        for n in ["containerd", "containerd.sock", "api.sock.bak", "flows.log.2", "netns"] {
            assert!(!is_run_dir_entry(n), "{n}");
        }
        for n in ["10.0.0.5", "fd00::2", "lock", "last_reserved_ip.0"] {
            assert!(is_ipam_store_entry(n), "{n}");
        }
        assert!(!is_ipam_store_entry("README") && !is_ipam_store_entry("lock.old"));
        for n in ["weir_endpoints", "weir_abi", "progs", "links", "node-links", "build-0123456789abcdef"] {
            assert!(weir_bpf::is_weirs_root_entry(n), "{n}");
        }
        assert!(!weir_bpf::is_weirs_root_entry("cilium_calls") && !weir_bpf::is_weirs_root_entry("tc"));
    }

    #[test]
    fn a_shallow_or_mounted_directory_is_not_removable() {
        for bad in ["/", "/run", "relative/dir/x", "/var/../run"] {
            assert!(check_removable(Path::new(bad), "run dir").is_err(), "{bad}");
        }
        // devpts is mounted there on every Linux host.
        assert!(check_removable(Path::new("/dev/pts"), "run dir").unwrap_err().to_string().contains("mount point"));
        let t = tempfile::tempdir().unwrap();
        check_removable(t.path(), "run dir").unwrap();
        assert_eq!(unescape_mount_path("/mnt/a\\040b"), "/mnt/a b");
    }

    #[test]
    fn the_refusal_names_each_user_and_the_fix() {
        let s = refusal(&["pod default/p (container c1, interface eth0)".to_string()]);
        assert!(s.contains("nothing was removed") && s.contains("  - pod default/p"), "{s}");
        assert!(s.contains("kubectl drain") && s.contains("--force"), "{s}");
    }
}
