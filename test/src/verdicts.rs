//! Verdict-level conformance: the same case files as the lab runner, judged
//! without sockets, network namespaces per pod or a running policyd.
//!
//! Per case: a fresh dataplane under its own bpffs root
//! (`/sys/fs/bpf/weir-verdict-<pid>-<n>`, removed on drop), a `Store` built
//! from the model manifests (test/conformance/model) and the case's steps,
//! pods with fake addresses and fake host ifindexes (each a real veth end in
//! the runner thread's private network namespace: BPF_PROG_TEST_RUN
//! resolves the ifindex it is given, but nothing is ever sent over them),
//! the real `Engine` compiling and the real `Sync` writing the maps. Pods
//! are added as CNI ADD adds them (endpoint entry not READY, gateways as
//! HOST in the ipcache) and every sync must flip them READY, as CNI ADD
//! waits for.
//!
//! A probe cell (src -> dst, loopback excluded as in the lab) is four
//! program runs through BPF_PROG_TEST_RUN, with conntrack flushed before
//! each cell so no earlier cell's flow can let one pass:
//!
//! 1. `from_pod` on the source's ifindex: the packet as the pod sends it
//!    (to the Service VIP and Service port, or to the pod address);
//! 2. `to_pod` on the destination's ifindex: the same packet after
//!    kube-proxy's DNAT (destination pod address, targetPort);
//! 3. `from_pod` on the destination: its answer (TCP SYN-ACK, UDP
//!    datagram, SCTP INIT ACK) before the un-DNAT;
//! 4. `to_pod` on the source: that answer from the VIP after the un-DNAT.
//!
//! The cell is connected when all four pass, which is what a lab probe
//! needs too (a connect completes, a UDP request gets its answer). Requests
//! are TCP SYN, a UDP datagram, or an SCTP INIT (CRC32c set).
//!
//! Addresses mirror the lab's single node: every pod in one IPv4 /24 and
//! one IPv6 /64 (cases rely on it: `{{cidr x/b 24}}` covers every pod),
//! each pod creation taking the next address as host-local does, so a
//! recreated pod gets a new one.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};
use ipnet::IpNet;
use serde_yaml_ng::{Mapping, Value};
use weir_bpf::{abi, pkt, Dataplane, Hook, TC_PASS};
use weir_common::registry::EndpointRecord;
use weir_policyd::engine::Engine;
use weir_policyd::source::{manifest, ObjectKind, ObjectRef};
use weir_policyd::store::Store;
use weir_policyd::sync::Sync;

use crate::case::{Case, DeleteRef, Family, Origin, Probe, Protocol, Step, Via, World};
use crate::expect::PodRef;
use crate::model;
use crate::placeholder::{self, PodIps};
use crate::probe::{compare, Observed, Outcome, ProbeOutput};
use crate::report;

/// The node's gateway addresses on the pod bridge (HOST in the ipcache).
pub const GATEWAY4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// Host part of the first pod address; the ones below stay free as
/// host-local leaves them.
const FIRST_HOST: u32 = 10;
/// Pods a case may create (addresses up to .254 of the /24).
pub const MAX_PODS: u32 = 244;
/// Host ifindex of the first pod; pod n gets FIRST_IFINDEX + 2n, its veth
/// peer the odd number after it (explicit, so no automatic numbering can
/// take a number a later pod needs).
pub const FIRST_IFINDEX: u32 = 1000;

/// Cases this runner cannot judge, with the reason. Empty: every case,
/// TCP, UDP and SCTP alike, is modelled (hairpin cells, the only thing
/// needing Service masquerade, are loopback cells that no runner compares).
pub const SKIPPED: &[(&str, &str)] = &[];

/// `WEIR_VERDICT_IGNORE_POLICIES=1`: compile as if no NetworkPolicy
/// existed (everything else unchanged). A control of the runner itself:
/// only cases expecting everything allowed can pass then.
pub fn ignore_policies() -> bool {
    std::env::var_os("WEIR_VERDICT_IGNORE_POLICIES").is_some_and(|v| v == "1")
}

/// One pod's fake interface: what CNI ADD would have made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddr {
    pub ifindex: u32,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl PodAddr {
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }
}

/// Hands out pod addresses, ifindexes and ClusterIPs in creation order.
#[derive(Debug, Default, Clone)]
pub struct Addresses {
    pods: u32,
    vips: u32,
}

impl Addresses {
    pub fn next_pod(&mut self) -> Result<PodAddr> {
        let n = self.pods;
        ensure!(
            n < MAX_PODS,
            "more than {MAX_PODS} pod creations in one case: the fake /24 is full"
        );
        self.pods += 1;
        let host = FIRST_HOST + n;
        Ok(PodAddr {
            ifindex: FIRST_IFINDEX + 2 * n,
            v4: Ipv4Addr::new(10, 77, 0, host as u8),
            v6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, host as u16),
        })
    }

    /// A Service's ClusterIPs (10.96.0.0/24 and fd96::/64, from .10 on).
    pub fn next_vip(&mut self) -> Result<(Ipv4Addr, Ipv6Addr)> {
        let n = self.vips;
        ensure!(n < MAX_PODS, "more than {MAX_PODS} Services in one case");
        self.vips += 1;
        let host = FIRST_HOST + n;
        Ok((
            Ipv4Addr::new(10, 96, 0, host as u8),
            Ipv6Addr::new(0xfd96, 0, 0, 0, 0, 0, 0, host as u16),
        ))
    }
}

/// A unique bpffs root holding a freshly loaded dataplane; the pins (and
/// so the maps and programs) are removed on drop, whatever happened.
pub struct BpfRoot {
    path: PathBuf,
    dp: Option<Dataplane>,
}

static ROOT_SEQ: AtomicU32 = AtomicU32::new(0);

impl BpfRoot {
    pub fn new() -> Result<BpfRoot> {
        let n = ROOT_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/weir-verdict-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        let mut root = BpfRoot { path, dp: None };
        root.dp = Some(
            Dataplane::load_or_open(&root.path)
                .with_context(|| format!("loading the dataplane under {}", root.path.display()))?,
        );
        Ok(root)
    }

    pub fn dp(&self) -> &Dataplane {
        self.dp.as_ref().expect("set in new")
    }
}

impl Drop for BpfRoot {
    fn drop(&mut self) {
        self.dp = None;
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Moves the calling thread into a new network namespace of its own (the
/// fake pod devices live there and vanish with the thread). Call on a
/// dedicated std::thread.
pub fn enter_private_netns() -> Result<()> {
    // SAFETY: unshare(CLONE_NEWNET) only changes the calling thread's netns.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    ensure!(
        r == 0,
        "unshare(CLONE_NEWNET): {} (needs root)",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The devices BPF_PROG_TEST_RUN needs for the fake ifindexes: one veth
/// pair per pod ifindex, made once in the current netns.
#[derive(Debug, Default)]
pub struct Devices {
    made: HashSet<u32>,
}

impl Devices {
    pub fn ensure(&mut self, ifindex: u32) -> Result<()> {
        if self.made.contains(&ifindex) {
            return Ok(());
        }
        let (name, peer) = (format!("wv{ifindex}"), format!("wv{ifindex}p"));
        let (idx, pidx) = (ifindex.to_string(), (ifindex + 1).to_string());
        let out = std::process::Command::new("ip")
            .args([
                "link", "add", &name, "index", &idx, "type", "veth", "peer", "name", &peer,
                "index", &pidx,
            ])
            .output()
            .context("running `ip link add` (iproute2)")?;
        ensure!(
            out.status.success(),
            "ip link add {name} index {idx}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.made.insert(ifindex);
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct FakePod {
    addr: PodAddr,
    uid: String,
    /// The object as applied (completed, placeholders resolved).
    obj: Value,
}

#[derive(Debug, Clone)]
struct FakeService {
    ips: Vec<IpAddr>,
    obj: Value,
}

/// One case's cluster: the store, the engine and sync of a policyd, and
/// the dataplane they program.
pub struct Cluster<'d> {
    root: BpfRoot,
    devices: &'d mut Devices,
    store: Store,
    engine: Engine,
    sync: Sync,
    addrs: Addresses,
    pods: BTreeMap<PodRef, FakePod>,
    services: BTreeMap<(String, String), FakeService>,
    uid_seq: u32,
    sport_seq: u16,
    /// Engine diagnostics seen (an invalid policy part is worth showing).
    pub diagnostics: BTreeSet<String>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// (containerPort, protocol, name) of every container port of a pod object.
fn pod_ports(pod: &Value) -> Vec<(u16, String, Option<String>)> {
    let mut out = Vec::new();
    let containers = pod
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_sequence);
    for c in containers.into_iter().flatten() {
        for p in c
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let Some(n) = p.get("containerPort").and_then(Value::as_u64) else {
                continue;
            };
            out.push((
                n as u16,
                str_at(p, &["protocol"]).unwrap_or("TCP").to_string(),
                str_at(p, &["name"]).map(str::to_string),
            ));
        }
    }
    out
}

/// The families a Service gets ClusterIPs in (dual-stack cluster, IPv4
/// primary; the lab's and the API server's defaulting).
fn service_families(svc: &Value) -> Vec<bool> {
    let spec = svc.get("spec");
    let mut fams: Vec<bool> = spec
        .and_then(|s| s.get("ipFamilies"))
        .and_then(Value::as_sequence)
        .map(|v| v.iter().map(|f| f.as_str() == Some("IPv6")).collect())
        .unwrap_or_default();
    if fams.is_empty() {
        fams.push(false);
    }
    let policy = spec
        .and_then(|s| str_at(s, &["ipFamilyPolicy"]))
        .unwrap_or("SingleStack");
    if policy == "SingleStack" {
        fams.truncate(1);
    } else {
        for f in [false, true] {
            if !fams.contains(&f) {
                fams.push(f);
            }
        }
    }
    fams
}

/// The port a backend serves a Service port on: the number, or the pod's
/// container port of that name and protocol (none: not an endpoint).
pub fn target_port(target: Option<&Value>, port: u16, protocol: &str, pod: &Value) -> Option<u16> {
    match target {
        None | Some(Value::Null) => Some(port),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0),
        Some(Value::String(name)) => match name.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => pod_ports(pod)
                .into_iter()
                .find(|(_, proto, n)| n.as_deref() == Some(name.as_str()) && proto == protocol)
                .map(|(p, _, _)| p),
        },
        Some(_) => None,
    }
}

/// One program run of a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub what: &'static str,
    pub hook: Hook,
    pub ifindex: u32,
    pub frame: Vec<u8>,
}

/// Where a probe's packets go: the address and port the client dials, and
/// where kube-proxy sends them (equal when dialing the pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub dialed: (IpAddr, u16),
    pub backend: (IpAddr, u16),
}

/// The four runs of a cell (see the module documentation).
pub fn plan_cell(
    protocol: Protocol,
    src: (u32, IpAddr),
    dst_ifindex: u32,
    target: Target,
    sport: u16,
) -> Vec<Stage> {
    let (sif, sip) = src;
    let (vip, vport) = target.dialed;
    let (bip, bport) = target.backend;
    let tag = 0x5eed_0000 | sport as u32;
    let request = |dst: IpAddr, dport: u16| match protocol {
        Protocol::TCP => pkt::tcp(sip, sport, dst, dport, pkt::SYN),
        Protocol::UDP => pkt::udp(sip, sport, dst, dport),
        Protocol::SCTP => pkt::sctp_init(sip, sport, dst, dport, tag),
    };
    let answer = |from: IpAddr, fport: u16| match protocol {
        Protocol::TCP => pkt::tcp(from, fport, sip, sport, pkt::SYN | pkt::ACK),
        Protocol::UDP => pkt::udp(from, fport, sip, sport),
        Protocol::SCTP => pkt::sctp_init_ack(from, fport, sip, sport, tag, !tag),
    };
    // Each pod has the MAC pkt::test_mac gives its ifindex (cni_add): it
    // sends from it at from_pod and the bridge hands it frames for it.
    let stage = |what, hook, ifindex, frame: Vec<u8>| Stage {
        what,
        hook,
        ifindex,
        frame: pkt::as_seen_at(hook, pkt::test_mac(ifindex), &frame),
    };
    vec![
        stage(
            "request at from_pod(src)",
            Hook::FromPod,
            sif,
            request(vip, vport),
        ),
        stage(
            "request at to_pod(dst)",
            Hook::ToPod,
            dst_ifindex,
            request(bip, bport),
        ),
        stage(
            "answer at from_pod(dst)",
            Hook::FromPod,
            dst_ifindex,
            answer(bip, bport),
        ),
        stage(
            "answer at to_pod(src)",
            Hook::ToPod,
            sif,
            answer(vip, vport),
        ),
    ]
}

impl<'d> Cluster<'d> {
    /// A fresh dataplane with the model applied and programmed.
    pub fn new(devices: &'d mut Devices) -> Result<Cluster<'d>> {
        let root = BpfRoot::new()?;
        let sync = Sync::from_maps(root.dp()).context("reading the fresh maps")?;
        let mut c = Cluster {
            root,
            devices,
            store: Store::default(),
            engine: Engine::new(),
            sync,
            addrs: Addresses::default(),
            pods: BTreeMap::new(),
            services: BTreeMap::new(),
            uid_seq: 0,
            sport_seq: 0,
            diagnostics: BTreeSet::new(),
        };
        let dir = crate::case::model_dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading the model {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
        files.sort();
        for f in files {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            let v: Value =
                serde_yaml_ng::from_str(&text).with_context(|| format!("{}", f.display()))?;
            c.apply(&v)
                .with_context(|| format!("model file {}", f.display()))?;
        }
        c.sync().context("programming the model")?;
        Ok(c)
    }

    pub fn dp(&self) -> &Dataplane {
        self.root.dp()
    }

    pub fn pod_ips(&self) -> PodIps {
        self.pods
            .iter()
            .map(|(p, f)| {
                (
                    p.clone(),
                    vec![IpAddr::V4(f.addr.v4), IpAddr::V6(f.addr.v6)],
                )
            })
            .collect()
    }

    pub fn pods(&self) -> Vec<PodRef> {
        self.pods.keys().cloned().collect()
    }

    fn put_in_store(&mut self, v: &Value, what: &str) -> Result<()> {
        let text = serde_yaml_ng::to_string(v)?;
        let parsed = manifest::parse(what, &text).map_err(|e| anyhow!("{e}"))?;
        ensure!(
            parsed.skipped.is_empty() && parsed.objects.len() == 1,
            "{what}: policyd's manifest parser took {} object(s) and skipped {:?}",
            parsed.objects.len(),
            parsed
                .skipped
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        );
        for o in parsed.objects {
            self.store.apply(o);
        }
        Ok(())
    }

    /// Apply one case object as `weirctl lab apply` would: completed,
    /// placeholders resolved against the current addresses, a new pod
    /// added through CNI ADD, a Service given ClusterIPs.
    pub fn apply(&mut self, obj: &Value) -> Result<()> {
        let done = model::complete(obj.clone())?;
        let mut v = placeholder::resolve(&done, &self.pod_ips())?;
        let id = model::object_id(&v)?;
        let ns = id.namespace.clone().unwrap_or_default();
        let what = format!("{} {}/{}", id.kind, ns, id.name);
        match id.kind.as_str() {
            "Pod" => {
                let key = PodRef::new(&ns, &id.name);
                if !self.pods.contains_key(&key) {
                    let addr = self.addrs.next_pod()?;
                    self.devices.ensure(addr.ifindex)?;
                    self.cni_add(addr)?;
                    self.uid_seq += 1;
                    let uid = format!("00000000-0000-4000-8000-{:012}", self.uid_seq);
                    self.pods.insert(
                        key.clone(),
                        FakePod {
                            addr,
                            uid,
                            obj: Value::Null,
                        },
                    );
                }
                let pod = self.pods.get_mut(&key).expect("inserted above");
                pod.obj = v.clone();
                let (addr, uid) = (pod.addr, pod.uid.clone());
                let m = v.as_mapping_mut().context("a Pod is a map")?;
                if let Some(meta) = m.get_mut("metadata").and_then(Value::as_mapping_mut) {
                    meta.insert(s("uid"), s(&uid));
                }
                let mut st = Mapping::new();
                st.insert(s("phase"), s("Running"));
                st.insert(s("podIP"), s(&addr.v4.to_string()));
                st.insert(
                    s("podIPs"),
                    Value::Sequence(
                        [addr.v4.to_string(), addr.v6.to_string()]
                            .iter()
                            .map(|ip| {
                                let mut m = Mapping::new();
                                m.insert(s("ip"), s(ip));
                                Value::Mapping(m)
                            })
                            .collect(),
                    ),
                );
                m.insert(s("status"), Value::Mapping(st));
            }
            "Service" => {
                let key = (ns.clone(), id.name.clone());
                let ips = match self.services.get(&key) {
                    Some(existing) => existing.ips.clone(),
                    None => {
                        let (v4, v6) = self.addrs.next_vip()?;
                        service_families(&v)
                            .into_iter()
                            .map(|six| if six { IpAddr::V6(v6) } else { IpAddr::V4(v4) })
                            .collect()
                    }
                };
                let spec = v
                    .get_mut("spec")
                    .and_then(Value::as_mapping_mut)
                    .with_context(|| format!("{what}: no spec"))?;
                spec.insert(s("clusterIP"), s(&ips[0].to_string()));
                spec.insert(
                    s("clusterIPs"),
                    Value::Sequence(ips.iter().map(|i| s(&i.to_string())).collect()),
                );
                spec.insert(
                    s("ipFamilies"),
                    Value::Sequence(
                        ips.iter()
                            .map(|i| s(if i.is_ipv6() { "IPv6" } else { "IPv4" }))
                            .collect(),
                    ),
                );
                self.services.insert(
                    key,
                    FakeService {
                        ips,
                        obj: v.clone(),
                    },
                );
            }
            _ => {}
        }
        self.put_in_store(&v, &what)
    }

    /// What CNI ADD writes before it waits for READY: the endpoint (the
    /// pod's MAC and addresses, not ready), and the gateways as HOST.
    fn cni_add(&mut self, addr: PodAddr) -> Result<()> {
        let dp = self.root.dp();
        let addrs = [
            IpNet::new(IpAddr::V4(addr.v4), 24)?,
            IpNet::new(IpAddr::V6(addr.v6), 64)?,
        ];
        dp.set_endpoint(
            addr.ifindex,
            &abi::Endpoint::for_pod(pkt::test_mac(addr.ifindex), &addrs, 0)?,
        )?;
        let host = abi::IpcacheValue {
            identity: abi::ID_HOST,
            endpoint: 0,
            flags: 0,
            pad: 0,
        };
        dp.set_ipcache(IpAddr::V4(GATEWAY4).into(), &host)?;
        dp.set_ipcache(IpAddr::V6(GATEWAY6).into(), &host)?;
        Ok(())
    }

    /// What CNI DEL removes: the endpoint, its counters, and the ipcache
    /// entries of its addresses that still point at it.
    fn cni_del(&mut self, pod: &PodRef) -> Result<()> {
        let Some(fp) = self.pods.remove(pod) else {
            return Ok(());
        };
        let dp = self.root.dp();
        let ifindex = fp.addr.ifindex;
        dp.remove_endpoint(ifindex)?;
        dp.remove_counters(ifindex)?;
        for ip in [IpAddr::V4(fp.addr.v4), IpAddr::V6(fp.addr.v6)] {
            if dp
                .ipcache_lookup(ip)?
                .is_some_and(|v| v.endpoint == ifindex)
            {
                dp.remove_ipcache(ip.into())?;
            }
        }
        Ok(())
    }

    pub fn delete(&mut self, r: &DeleteRef) -> Result<()> {
        let ns = r.namespace.clone().unwrap_or_default();
        let oref = |kind, namespace: &str, name: &str| ObjectRef {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        match r.kind.as_str() {
            "Pod" => {
                self.cni_del(&PodRef::new(&ns, &r.name))?;
                self.store.delete(&oref(ObjectKind::Pod, &ns, &r.name));
            }
            "Service" => {
                self.services.remove(&(ns.clone(), r.name.clone()));
                self.store.delete(&oref(ObjectKind::Service, &ns, &r.name));
            }
            "NetworkPolicy" => {
                self.store
                    .delete(&oref(ObjectKind::NetworkPolicy, &ns, &r.name));
            }
            "Namespace" => {
                // Like the namespace controller: everything inside goes too.
                let inside: Vec<PodRef> = self
                    .pods
                    .keys()
                    .filter(|p| p.ns == r.name)
                    .cloned()
                    .collect();
                for p in inside {
                    self.cni_del(&p)?;
                }
                self.services.retain(|(n, _), _| *n != r.name);
                self.store.pods.retain(|(n, _), _| *n != r.name);
                self.store.services.retain(|(n, _), _| *n != r.name);
                self.store.policies.retain(|(n, _), _| *n != r.name);
                self.store.delete(&oref(ObjectKind::Namespace, "", &r.name));
            }
            other => bail!("delete: kind {other:?} is not one a case may use"),
        }
        Ok(())
    }

    /// Compile and write, as policyd does after a change; then every pod
    /// must be READY (CNI ADD would otherwise still be waiting).
    pub fn sync(&mut self) -> Result<()> {
        let records: Vec<EndpointRecord> = self
            .pods
            .iter()
            .map(|(p, f)| EndpointRecord {
                container_id: format!("verdict{}", f.addr.ifindex),
                ifname: "eth0".into(),
                netns: format!("/run/netns/verdict-{}-{}", p.ns, p.name),
                network: "weir".into(),
                pod_namespace: p.ns.clone(),
                pod_name: p.name.clone(),
                pod_uid: f.uid.clone(),
                host_ifname: format!("wv{}", f.addr.ifindex),
                host_ifindex: f.addr.ifindex,
                ips: vec![IpAddr::V4(f.addr.v4), IpAddr::V6(f.addr.v6)],
                mac: weir_bpf::addr::format_mac(pkt::test_mac(f.addr.ifindex)),
                gateways: vec![IpAddr::V4(GATEWAY4), IpAddr::V6(GATEWAY6)],
            })
            .collect();
        let desired = if ignore_policies() {
            let mut store = self.store.clone();
            store.policies.clear();
            self.engine.compile(&store, &records)
        } else {
            self.engine.compile(&self.store, &records)
        };
        for d in &desired.diagnostics {
            self.diagnostics
                .insert(format!("{} {}: {}", d.object, d.field, d.message));
        }
        self.sync
            .apply(self.root.dp(), &desired)
            .context("sync into the maps")?;
        for (p, f) in &self.pods {
            let ep = self.root.dp().endpoint(f.addr.ifindex)?;
            ensure!(
                ep.is_some_and(|e| e.flags & abi::EP_READY != 0),
                "pod {p} (ifindex {}) is not READY after the sync: {ep:?}",
                f.addr.ifindex
            );
        }
        Ok(())
    }

    /// The ClusterIP:port a probe of `dst` dials and the backend port it
    /// lands on: the Service of dst's namespace selecting only dst that
    /// exposes port/protocol with a ClusterIP of the family (the model's
    /// `s-<ns>-<pod>` first), as `weirctl lab probe` picks it.
    pub fn service_target(
        &self,
        dst: &PodRef,
        port: u16,
        protocol: Protocol,
        v6: bool,
    ) -> Result<Target> {
        let pod = self
            .pods
            .get(dst)
            .with_context(|| format!("no pod {dst}"))?;
        let proto = protocol.to_string();
        let preferred = model::service_name(&dst.ns, &dst.name);
        let mut cands: Vec<(bool, Target)> = Vec::new();
        for ((ns, name), svc) in &self.services {
            if *ns != dst.ns {
                continue;
            }
            let sel: BTreeMap<String, String> = svc
                .obj
                .get("spec")
                .and_then(|s| s.get("selector"))
                .and_then(Value::as_mapping)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| {
                            Some((k.as_str()?.to_string(), v.as_str()?.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if sel.is_empty() {
                continue;
            }
            let selected: Vec<&PodRef> = self
                .pods
                .iter()
                .filter(|(p, f)| {
                    p.ns == *ns && sel.iter().all(|(k, v)| labels_of(&f.obj).get(k) == Some(v))
                })
                .map(|(p, _)| p)
                .collect();
            if selected != [dst] {
                continue;
            }
            let sp = svc
                .obj
                .get("spec")
                .and_then(|s| s.get("ports"))
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .find(|sp| {
                    sp.get("port").and_then(Value::as_u64) == Some(port as u64)
                        && str_at(sp, &["protocol"]).unwrap_or("TCP") == proto
                });
            let Some(sp) = sp else { continue };
            let Some(vip) = svc.ips.iter().find(|i| i.is_ipv6() == v6) else {
                continue;
            };
            let Some(tp) = target_port(sp.get("targetPort"), port, &proto, &pod.obj) else {
                continue;
            };
            cands.push((
                *name == preferred,
                Target {
                    dialed: (*vip, port),
                    backend: (pod.addr.ip(v6), tp),
                },
            ));
        }
        cands.sort_by_key(|(pref, _)| !*pref);
        cands.first().map(|(_, t)| *t).with_context(|| {
            format!(
                "pod {dst} has no Service selecting only it with port {port}/{proto}{}",
                if v6 { " and an IPv6 ClusterIP" } else { "" }
            )
        })
    }

    /// One cell: Connected when all four runs pass, else Blocked naming the
    /// first run that dropped and the drop reasons the programs counted.
    pub fn cell(
        &mut self,
        from: &PodRef,
        to: &PodRef,
        p: &Probe,
    ) -> Result<(Observed, Option<String>)> {
        let v6 = p.family == Family::IPv6;
        let src = self
            .pods
            .get(from)
            .with_context(|| format!("no pod {from}"))?
            .addr;
        let dst = self
            .pods
            .get(to)
            .with_context(|| format!("no pod {to}"))?
            .addr;
        let target = match p.via {
            Via::Pod => Target {
                dialed: (dst.ip(v6), p.port),
                backend: (dst.ip(v6), p.port),
            },
            Via::Service => self.service_target(to, p.port, p.protocol, v6)?,
        };
        // Distinct source ports as well as a flush: a flow of an earlier
        // cell can never be the one this cell finds.
        self.sport_seq = self.sport_seq.wrapping_add(1);
        let sport = 33000 + self.sport_seq % 28000;
        let dp = self.root.dp();
        dp.ct_flush()?;
        let counters_before: std::collections::HashMap<abi::CounterKey, u64> = dp
            .counters()?
            .into_iter()
            .map(|(k, v)| (k, v.packets))
            .collect();
        let deferred = |dp: &Dataplane| -> Result<u64> {
            Ok(dp
                .counter(src.ifindex, abi::DIR_EGRESS, abi::R_ALLOW_DEFERRED)?
                .packets)
        };
        let deferred_before = deferred(dp)?;
        for (i, st) in plan_cell(
            p.protocol,
            (src.ifindex, src.ip(v6)),
            dst.ifindex,
            target,
            sport,
        )
        .into_iter()
        .enumerate()
        {
            let rc = dp
                .run(st.hook, &st.frame, st.ifindex)
                .with_context(|| format!("{from} -> {to}: {}", st.what))?;
            if rc != TC_PASS {
                let reasons: Vec<String> = dp
                    .counters()?
                    .into_iter()
                    .filter(|(k, v)| {
                        abi::reason_is_drop(k.reason)
                            && v.packets > counters_before.get(k).copied().unwrap_or(0)
                    })
                    .map(|(k, _)| {
                        format!("{} (endpoint {})", abi::reason_name(k.reason), k.endpoint)
                    })
                    .collect();
                return Ok((
                    Observed::Blocked,
                    Some(format!("{}: {}", st.what, reasons.join(", "))),
                ));
            }
            // A local pod or a VIP is judged at the destination, after DNAT.
            if i == 0 {
                ensure!(
                    deferred(dp)? == deferred_before + 1,
                    "{from} -> {to}: from_pod passed the request without deferring it to the destination"
                );
            }
        }
        Ok((Observed::Connected, None))
    }

    /// Every cell of a probe over `pods` (loopback cells are not run).
    #[allow(clippy::type_complexity)]
    pub fn probe(
        &mut self,
        p: &Probe,
        pods: &[PodRef],
    ) -> Result<(ProbeOutput, BTreeMap<(PodRef, PodRef), String>)> {
        let mut results = BTreeMap::new();
        let mut drops = BTreeMap::new();
        for f in pods {
            let mut row = BTreeMap::new();
            for t in pods {
                if f == t {
                    continue;
                }
                let (obs, at) = self.cell(f, t, p)?;
                if let Some(at) = at {
                    drops.insert((f.clone(), t.clone()), at);
                }
                row.insert(t.clone(), obs);
            }
            results.insert(f.clone(), row);
        }
        Ok((
            ProbeOutput {
                port: p.port,
                protocol: p.protocol.to_string(),
                results,
            },
            drops,
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// The runner itself failed (load, apply, sync): counted as failed.
    Error,
    Skipped(String),
}

impl Status {
    pub fn word(&self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Error => "ERROR",
            Status::Skipped(_) => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub origin: Origin,
    pub protocols: Vec<Protocol>,
    pub status: Status,
    pub detail: String,
    /// Cells judged, over all probes (each cell is four program runs).
    pub cells: usize,
    pub secs: f64,
}

fn skip_reason(name: &str) -> Option<&'static str> {
    SKIPPED.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}

pub fn run_case(devices: &mut Devices, case: &Case) -> CaseResult {
    let t = Instant::now();
    let mut detail = String::new();
    let mut cells = 0;
    let status = match skip_reason(&case.name) {
        Some(r) => Status::Skipped(r.to_string()),
        None => match drive(devices, case, &mut detail, &mut cells) {
            Ok(true) => Status::Pass,
            Ok(false) => Status::Fail,
            Err(e) => {
                let _ = writeln!(detail, "error: {e:#}");
                Status::Error
            }
        },
    };
    CaseResult {
        name: case.name.clone(),
        origin: case.origin,
        protocols: case.protocols.clone(),
        status,
        detail,
        cells,
        secs: t.elapsed().as_secs_f64(),
    }
}

/// Ok(true) when every probe matched; Ok(false) with the tables in
/// `detail` at the first that did not (later steps are not run, as in the
/// lab runner).
fn drive(
    devices: &mut Devices,
    case: &Case,
    detail: &mut String,
    cells: &mut usize,
) -> Result<bool> {
    let mut c = Cluster::new(devices)?;
    let mut world = World::model();
    for (j, obj) in case.setup.iter().enumerate() {
        c.apply(obj).with_context(|| format!("setup[{j}]"))?;
        world.apply(obj)?;
    }
    if !case.setup.is_empty() {
        c.sync().context("setup")?;
    }
    for (i, step) in case.steps.iter().enumerate() {
        match step {
            Step::Apply(objs) => {
                for (j, obj) in objs.iter().enumerate() {
                    c.apply(obj)
                        .with_context(|| format!("steps[{i}].apply[{j}]"))?;
                    world.apply(obj)?;
                }
                c.sync().with_context(|| format!("steps[{i}]"))?;
            }
            Step::Delete(refs) => {
                for (j, r) in refs.iter().enumerate() {
                    c.delete(r)
                        .with_context(|| format!("steps[{i}].delete[{j}]"))?;
                    world.delete(r)?;
                }
                c.sync().with_context(|| format!("steps[{i}]"))?;
            }
            Step::Probe(p) => {
                let pods = world.pods();
                ensure!(
                    pods == c.pods(),
                    "steps[{i}]: the case knows pods {pods:?}, the runner made {:?}",
                    c.pods()
                );
                let expected = p.expect.evaluate(&pods).map_err(anyhow::Error::msg)?;
                let (out, drops) = c
                    .probe(p, &pods)
                    .with_context(|| format!("steps[{i}].probe"))?;
                *cells += pods.len() * (pods.len() - 1);
                let cmp = compare(&expected, &out, false);
                if cmp.outcome() != Outcome::Match {
                    let _ = writeln!(
                        detail,
                        "steps[{i}] probe {}/{} via {:?} over {:?}: verdicts differ from the expectation",
                        p.protocol, p.port, p.via, p.family
                    );
                    detail.push_str(&cmp.render());
                    for (f, t) in &cmp.wrong {
                        let why = drops
                            .get(&(f.clone(), t.clone()))
                            .map(|w| format!("dropped: {w}"))
                            .unwrap_or_else(|| "all four runs passed".into());
                        let _ = writeln!(detail, "  {f} -> {t}: {why}");
                    }
                    if !c.diagnostics.is_empty() {
                        let _ = writeln!(detail, "engine diagnostics:");
                        for d in &c.diagnostics {
                            let _ = writeln!(detail, "  {d}");
                        }
                    }
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.status == Status::Pass)
            .count()
    }

    pub fn failed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| matches!(r.status, Status::Fail | Status::Error))
            .count()
    }

    pub fn skipped(&self) -> usize {
        self.results
            .iter()
            .filter(|r| matches!(r.status, Status::Skipped(_)))
            .count()
    }

    pub fn summary_line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }

    pub fn render(&self) -> String {
        let rows: Vec<report::Row> = self
            .results
            .iter()
            .map(|r| report::Row {
                name: r.name.clone(),
                origin: r.origin.to_string(),
                protocols: report::protocols(&r.protocols),
                figures: format!("{:>7}{:>7.2}", r.cells, r.secs),
                result: r.status.word(),
                detail: match &r.status {
                    Status::Pass => None,
                    Status::Skipped(why) => Some(format!("{why}\n{}", r.detail)),
                    _ => Some(r.detail.clone()),
                },
            })
            .collect();
        report::render(&format!("{:>7}{:>7}", "cells", "secs"), &rows, &self.summary_line())
    }
}

/// Every case in order, on the calling thread, which must already be in a
/// private network namespace ([`enter_private_netns`]).
pub fn run_suite(cases: &[Case]) -> Report {
    let mut devices = Devices::default();
    let mut report = Report::default();
    for (i, c) in cases.iter().enumerate() {
        let r = run_case(&mut devices, c);
        eprintln!(
            "[{}/{}] {:<60} {} ({:.2}s)",
            i + 1,
            cases.len(),
            r.name,
            r.status.word(),
            r.secs
        );
        report.results.push(r);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_distinct_share_one_subnet_and_never_repeat() {
        let mut a = Addresses::default();
        let first = a.next_pod().unwrap();
        assert_eq!(first.ifindex, FIRST_IFINDEX);
        assert_eq!(first.v4, Ipv4Addr::new(10, 77, 0, 10));
        assert_eq!(first.v6, "fd77::a".parse::<Ipv6Addr>().unwrap());
        let mut seen = vec![first];
        for _ in 1..MAX_PODS {
            seen.push(a.next_pod().unwrap());
        }
        assert!(a.next_pod().is_err(), "the /24 is full");
        let mut ifx: Vec<u32> = seen.iter().map(|p| p.ifindex).collect();
        ifx.sort();
        ifx.dedup();
        assert_eq!(ifx.len(), seen.len());
        // veth peers take the odd number after each pod's: never another pod's.
        assert!(ifx.iter().all(|i| (i - FIRST_IFINDEX).is_multiple_of(2)));
        for p in &seen {
            // one /24 and one /64, like a single node's pod subnet; never the gateway
            assert_eq!(
                placeholder::network(IpAddr::V4(p.v4), 24).unwrap(),
                "10.77.0.0/24"
            );
            assert_eq!(
                placeholder::network(IpAddr::V6(p.v6), 64).unwrap(),
                "fd77::/64"
            );
            assert_ne!(p.v4, GATEWAY4);
            assert_ne!(p.v6, GATEWAY6);
            assert_eq!(
                p.v4.octets()[3] as u16,
                p.v6.segments()[7],
                "the twins share a host part"
            );
        }
        let (v4, v6) = a.next_vip().unwrap();
        assert_eq!(
            (v4, v6),
            (Ipv4Addr::new(10, 96, 0, 10), "fd96::a".parse().unwrap())
        );
        assert_ne!(a.next_vip().unwrap().0, v4);
    }

    #[test]
    fn service_families_follow_the_ip_family_policy() {
        let svc = |y: &str| serde_yaml_ng::from_str::<Value>(y).unwrap();
        assert_eq!(
            service_families(&svc("{spec: {ipFamilyPolicy: PreferDualStack}}")),
            [false, true]
        );
        assert_eq!(service_families(&svc("{spec: {}}")), [false]);
        assert_eq!(
            service_families(&svc("{spec: {ipFamilies: [IPv6]}}")),
            [true]
        );
        assert_eq!(
            service_families(&svc(
                "{spec: {ipFamilies: [IPv6], ipFamilyPolicy: RequireDualStack}}"
            )),
            [true, false]
        );
        // The model's Services are dual-stack.
        assert_eq!(service_families(&model::service("x", "a")), [false, true]);
    }

    #[test]
    fn target_ports_by_number_name_and_protocol() {
        let pod = model::pod("x", "a", &BTreeMap::new());
        let y = |s: &str| serde_yaml_ng::from_str::<Value>(s).unwrap();
        assert_eq!(target_port(None, 80, "TCP", &pod), Some(80));
        assert_eq!(target_port(Some(&y("81")), 80, "TCP", &pod), Some(81));
        assert_eq!(target_port(Some(&y("'81'")), 80, "TCP", &pod), Some(81));
        assert_eq!(
            target_port(Some(&y("serve-81-udp")), 80, "UDP", &pod),
            Some(81)
        );
        // a name of another protocol is no endpoint
        assert_eq!(target_port(Some(&y("serve-81-udp")), 80, "TCP", &pod), None);
        assert_eq!(target_port(Some(&y("0")), 80, "TCP", &pod), None);
        // The model maps every Service port to the same number.
        for sp in model::service_spec("a")["ports"].as_sequence().unwrap() {
            assert_eq!(sp["port"], sp["targetPort"]);
        }
    }

    fn parse_l4(frame: &[u8]) -> (IpAddr, IpAddr, u8, &[u8]) {
        match u16::from_be_bytes([frame[12], frame[13]]) {
            0x0800 => {
                let ihl = (frame[14] & 0xf) as usize * 4;
                let a: [u8; 4] = frame[26..30].try_into().unwrap();
                let b: [u8; 4] = frame[30..34].try_into().unwrap();
                (
                    IpAddr::from(a),
                    IpAddr::from(b),
                    frame[23],
                    &frame[14 + ihl..],
                )
            }
            0x86dd => {
                let a: [u8; 16] = frame[22..38].try_into().unwrap();
                let b: [u8; 16] = frame[38..54].try_into().unwrap();
                (IpAddr::from(a), IpAddr::from(b), frame[20], &frame[54..])
            }
            t => panic!("ethertype {t:#x}"),
        }
    }

    fn ports(l4: &[u8]) -> (u16, u16) {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    }

    #[test]
    fn a_service_cell_is_dnat_then_un_dnat() {
        let t = Target {
            dialed: (ip("10.96.0.10"), 80),
            backend: (ip("10.77.0.11"), 81),
        };
        let st = plan_cell(Protocol::TCP, (1000, ip("10.77.0.10")), 1002, t, 40000);
        let hooks: Vec<(Hook, u32)> = st.iter().map(|s| (s.hook, s.ifindex)).collect();
        assert_eq!(
            hooks,
            [
                (Hook::FromPod, 1000),
                (Hook::ToPod, 1002),
                (Hook::FromPod, 1002),
                (Hook::ToPod, 1000)
            ]
        );
        let want = [
            ("10.77.0.10", 40000, "10.96.0.10", 80, pkt::SYN),
            ("10.77.0.10", 40000, "10.77.0.11", 81, pkt::SYN),
            ("10.77.0.11", 81, "10.77.0.10", 40000, pkt::SYN | pkt::ACK),
            ("10.96.0.10", 80, "10.77.0.10", 40000, pkt::SYN | pkt::ACK),
        ];
        for (s, (src, sp, dst, dp, flags)) in st.iter().zip(want) {
            let mac = pkt::test_mac(s.ifindex);
            let own = if s.hook == Hook::FromPod {
                &s.frame[6..12]
            } else {
                &s.frame[0..6]
            };
            assert_eq!(own, &mac, "{}: the pod's MAC", s.what);
            let (a, b, proto, l4) = parse_l4(&s.frame);
            assert_eq!((a, b, proto), (ip(src), ip(dst), pkt::TCP), "{}", s.what);
            assert_eq!(ports(l4), (sp, dp), "{}", s.what);
            assert_eq!(l4[13], flags, "{}", s.what);
        }
    }

    #[test]
    fn udp_and_sctp_cells_over_ipv6() {
        let t = Target {
            dialed: (ip("fd77::b"), 80),
            backend: (ip("fd77::b"), 80),
        };
        let st = plan_cell(Protocol::UDP, (1000, ip("fd77::a")), 1002, t, 40001);
        let (a, b, proto, l4) = parse_l4(&st[0].frame);
        assert_eq!(
            (a, b, proto, ports(l4)),
            (ip("fd77::a"), ip("fd77::b"), pkt::UDP, (40001, 80))
        );
        assert_eq!(u16::from_be_bytes([l4[4], l4[5]]) as usize, l4.len());

        let st = plan_cell(Protocol::SCTP, (1000, ip("fd77::a")), 1002, t, 40002);
        let (_, _, proto, init) = parse_l4(&st[1].frame);
        assert_eq!(proto, pkt::SCTP);
        assert_eq!(init[12], pkt::SCTP_INIT);
        assert_eq!(&init[4..8], &[0, 0, 0, 0]);
        let tag = &init[16..20];
        let (_, _, _, ack) = parse_l4(&st[2].frame);
        assert_eq!(ack[12], pkt::SCTP_INIT_ACK);
        assert_eq!(
            &ack[4..8],
            tag,
            "the INIT ACK is tagged with the INIT's initiate tag"
        );
        assert_eq!(ports(ack), (80, 40002));
        for l4 in [init, ack] {
            let mut z = l4.to_vec();
            z[8..12].fill(0);
            assert_eq!(
                u32::from_le_bytes(l4[8..12].try_into().unwrap()),
                pkt::crc32c(&z)
            );
        }
    }

    #[test]
    fn the_skip_list_names_real_cases() {
        let cases = crate::case::load_dir(&crate::case::cases_dir()).unwrap();
        for (name, why) in SKIPPED {
            assert!(
                cases.iter().any(|c| c.name == *name),
                "SKIPPED names no case {name}"
            );
            assert!(!why.trim().is_empty(), "{name}: say why it is skipped");
        }
    }

    #[test]
    fn summary_counts_errors_as_failures() {
        let r = |name: &str, status| CaseResult {
            name: name.into(),
            origin: Origin::Weir,
            protocols: vec![Protocol::SCTP],
            status,
            detail: format!("detail of {name}\n"),
            cells: 72,
            secs: 0.1,
        };
        let rep = Report {
            results: vec![
                r("a", Status::Pass),
                r("b", Status::Fail),
                r("c", Status::Error),
                r("d", Status::Skipped("no model of it".into())),
            ],
        };
        assert_eq!(rep.summary_line(), "1 passed, 2 failed, 1 skipped");
        let text = rep.render();
        assert!(
            text.trim_end().ends_with("1 passed, 2 failed, 1 skipped"),
            "{text}"
        );
        assert!(text.contains("== d (skipped)\nno model of it"), "{text}");
        assert!(text.contains("== b (FAIL)\ndetail of b"), "{text}");
        assert!(!text.contains("detail of a"));
    }
}
