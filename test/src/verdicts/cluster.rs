//! One case's cluster: the store, engine and sync of a policyd, the
//! dataplane they program, and what CNI ADD, the API server and kube-proxy
//! would add (pod addresses, ClusterIPs, the Service a probe dials).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, ensure, Context, Result};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Pod, PodIP, PodStatus, Service};
use serde_yaml_ng::Value;
use weir_bpf::{abi, pkt, Dataplane, TC_PASS};
use weir_common::registry::EndpointRecord;
use weir_policyd::engine::explain::{End, Explanation, Flow};
use weir_policyd::engine::Engine;
use weir_policyd::source::{manifest, Object, ObjectKind};
use weir_policyd::store::Store;
use weir_policyd::sync::Sync;
use weirctl::lab::objects::{object_ref, pod_ports};
use weirctl::lab::services::{self, PodView};

use super::addresses::{Addresses, PodAddr, GATEWAY4, GATEWAY6};
use super::cell::{plan_cell, protocol_number, Target};
use super::kernel::{BpfRoot, Devices};
use super::suite::ignore_policies;
use crate::case::{DeleteRef, Family, Probe, Protocol, Via};
use crate::expect::PodRef;
use crate::model;
use crate::placeholder::{self, PodIps};
use crate::probe::{Observed, ProbeOutput};

#[derive(Debug, Clone)]
struct FakePod {
    addr: PodAddr,
    uid: String,
    /// The object as applied (completed, placeholders resolved).
    pod: Pod,
}

#[derive(Debug, Clone)]
struct FakeService {
    ips: Vec<IpAddr>,
    svc: Service,
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

/// The families a Service gets ClusterIPs in, IPv6 as true (the lab's
/// defaulting: dual-stack cluster, IPv4 primary).
fn service_families(svc: &Service) -> Vec<bool> {
    services::service_families(svc).into_iter().map(|f| !services::is_ipv4_family(f)).collect()
}

/// One case object as policyd's manifest parser reads it.
fn parse_object(v: &Value, what: &str) -> Result<Object> {
    let text = serde_yaml_ng::to_string(v)?;
    let mut parsed = manifest::parse(what, &text).map_err(|e| anyhow!("{e}"))?;
    ensure!(
        parsed.skipped.is_empty() && parsed.objects.len() == 1,
        "{what}: policyd's manifest parser took {} object(s) and skipped {:?}",
        parsed.objects.len(),
        parsed.skipped.iter().map(|e| e.to_string()).collect::<Vec<_>>()
    );
    Ok(parsed.objects.remove(0))
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
            let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            let v: Value = serde_yaml_ng::from_str(&text).with_context(|| format!("{}", f.display()))?;
            c.apply(&v).with_context(|| format!("model file {}", f.display()))?;
        }
        c.sync().context("programming the model")?;
        Ok(c)
    }

    pub fn dp(&self) -> &Dataplane {
        self.root.dp()
    }

    pub fn pod_ips(&self) -> PodIps {
        self.pods.iter().map(|(p, f)| (p.clone(), vec![IpAddr::V4(f.addr.v4), IpAddr::V6(f.addr.v6)])).collect()
    }

    pub fn pods(&self) -> Vec<PodRef> {
        self.pods.keys().cloned().collect()
    }

    /// The running pods as the Service code sees them.
    fn pod_views(&self) -> Vec<PodView> {
        self.pods
            .iter()
            .map(|(p, f)| PodView {
                namespace: p.ns.clone(),
                name: p.name.clone(),
                labels: f.pod.metadata.labels.clone().unwrap_or_default(),
                ips: vec![IpAddr::V4(f.addr.v4), IpAddr::V6(f.addr.v6)],
                ports: pod_ports(&f.pod),
            })
            .collect()
    }

    /// Apply one case object as `weirctl lab apply` would: completed,
    /// placeholders resolved against the current addresses, a new pod
    /// added through CNI ADD, a Service given ClusterIPs.
    pub fn apply(&mut self, obj: &Value) -> Result<()> {
        let done = model::complete(obj.clone())?;
        let v = placeholder::resolve(&done, &self.pod_ips())?;
        let id = model::object_id(&v)?;
        let ns = id.namespace.clone().unwrap_or_default();
        let what = format!("{} {}/{}", id.kind, ns, id.name);
        let mut obj = parse_object(&v, &what)?;
        match &mut obj {
            Object::Pod(pod) => {
                let key = PodRef::new(&ns, &id.name);
                if !self.pods.contains_key(&key) {
                    let addr = self.addrs.next_pod()?;
                    self.devices.ensure(addr.ifindex)?;
                    self.cni_add(addr)?;
                    self.uid_seq += 1;
                    let uid = format!("00000000-0000-4000-8000-{:012}", self.uid_seq);
                    self.pods.insert(key.clone(), FakePod { addr, uid, pod: pod.clone() });
                }
                let fake = self.pods.get_mut(&key).expect("inserted above");
                fake.pod = pod.clone();
                pod.metadata.uid = Some(fake.uid.clone());
                let ips = [fake.addr.v4.to_string(), fake.addr.v6.to_string()];
                pod.status = Some(PodStatus {
                    phase: Some("Running".into()),
                    pod_ip: Some(ips[0].clone()),
                    pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
                    ..Default::default()
                });
            }
            Object::Service(svc) => {
                let key = (ns.clone(), id.name.clone());
                let ips = match self.services.get(&key) {
                    Some(existing) => existing.ips.clone(),
                    None => {
                        let (v4, v6) = self.addrs.next_vip()?;
                        service_families(svc)
                            .into_iter()
                            .map(|six| if six { IpAddr::V6(v6) } else { IpAddr::V4(v4) })
                            .collect()
                    }
                };
                let spec = svc.spec.as_mut().with_context(|| format!("{what}: no spec"))?;
                spec.cluster_ip = Some(ips[0].to_string());
                spec.cluster_ips = Some(ips.iter().map(|i| i.to_string()).collect());
                spec.ip_families =
                    Some(ips.iter().map(|i| if i.is_ipv6() { "IPv6" } else { "IPv4" }.to_string()).collect());
                self.services.insert(key, FakeService { ips, svc: svc.clone() });
            }
            _ => {}
        }
        self.store.apply(obj);
        Ok(())
    }

    /// What CNI ADD writes before it waits for READY: the endpoint (the
    /// pod's MAC and addresses, not ready), and the gateways as HOST.
    fn cni_add(&mut self, addr: PodAddr) -> Result<()> {
        let dp = self.root.dp();
        let addrs = [IpNet::new(IpAddr::V4(addr.v4), 24)?, IpNet::new(IpAddr::V6(addr.v6), 64)?];
        dp.admit_pod(addr.ifindex, pkt::test_mac(addr.ifindex), &addrs, false)?;
        dp.set_host_addresses(&[IpAddr::V4(GATEWAY4), IpAddr::V6(GATEWAY6)])?;
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
        if let Some(e) = dp.forget_pod(ifindex, &[IpAddr::V4(fp.addr.v4), IpAddr::V6(fp.addr.v6)]).into_iter().next() {
            return Err(e.into());
        }
        Ok(())
    }

    pub fn delete(&mut self, r: &DeleteRef) -> Result<()> {
        let ns = r.namespace.clone().unwrap_or_default();
        let oref = object_ref;
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
                self.store.delete(&oref(ObjectKind::NetworkPolicy, &ns, &r.name));
            }
            "ClusterNetworkPolicy" => {
                self.store.delete(&oref(ObjectKind::ClusterNetworkPolicy, "", &r.name));
            }
            "Namespace" => {
                // Like the namespace controller: everything inside goes too.
                let inside: Vec<PodRef> = self.pods.keys().filter(|p| p.ns == r.name).cloned().collect();
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
            self.diagnostics.insert(format!("{} {}: {}", d.object, d.field, d.message));
        }
        self.sync.apply(self.root.dp(), &desired).context("sync into the maps")?;
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
    /// lands on, as `weirctl lab probe` picks the Service and kube-proxy
    /// resolves its targetPort; None when the Service has no endpoint on
    /// dst for that port (the DNAT drops the connection).
    pub fn service_target(&self, dst: &PodRef, port: u16, protocol: Protocol, v6: bool) -> Result<Option<Target>> {
        let pod = self.pods.get(dst).with_context(|| format!("no pod {dst}"))?;
        let services = self.services.values().map(|s| (&s.svc, s.ips.as_slice()));
        let t =
            services::probe_target(services, &self.pod_views(), (&dst.ns, &dst.name), port, &protocol.to_string(), v6)
                .map_err(anyhow::Error::msg)?;
        Ok(t.target_port.map(|tp| Target { dialed: (t.vip, t.port), backend: (pod.addr.ip(v6), tp) }))
    }

    /// One cell: Connected when all four runs pass, else Blocked naming the
    /// first run that dropped and the drop reasons the programs counted.
    /// The engine's explanation of the flow (policyd's `/v1/explain`) must
    /// give the same verdict, by rule and by map entry: an error if not.
    pub fn cell(&mut self, from: &PodRef, to: &PodRef, p: &Probe) -> Result<(Observed, Option<String>)> {
        let (observed, why) = self.run_cell(from, to, p)?;
        if let Some((target, e)) = self.explain_cell(from, to, p)? {
            let connected = observed == Observed::Connected;
            let sides = [("egress", &e.egress), ("ingress", &e.ingress)];
            ensure!(
                e.allowed == connected,
                "{from} -> {to} ({:?} {}): explain says allowed={} but the programs {}; egress: {}, ingress: {}",
                target.backend,
                p.protocol,
                e.allowed,
                if connected { "pass it" } else { "drop it" },
                e.egress.reason,
                e.ingress.reason
            );
            for (dir, side) in sides {
                let maps =
                    side.maps.as_ref().with_context(|| format!("{from} -> {to}: no map view of the {dir} side"))?;
                ensure!(
                    maps.allowed == side.allowed,
                    "{from} -> {to}: explain's {dir} by rule ({}) and by map entry ({}) differ",
                    side.allowed,
                    maps.allowed
                );
            }
        }
        Ok((observed, why))
    }

    /// The engine's explanation of a cell's flow, as the dataplane judges
    /// it (the backend after DNAT); None when the Service has no endpoint.
    fn explain_cell(&mut self, from: &PodRef, to: &PodRef, p: &Probe) -> Result<Option<(Target, Explanation)>> {
        let Some((src, _, target)) = self.cell_target(from, to, p)? else {
            return Ok(None);
        };
        let flow = Flow {
            src: End { addr: src.ip(p.family == Family::IPv6), pod: Some((from.ns.clone(), from.name.clone())) },
            dst: End { addr: target.backend.0, pod: Some((to.ns.clone(), to.name.clone())) },
            protocol: protocol_number(p.protocol),
            port: target.backend.1,
        };
        let e = self.engine.explain(&self.store, &flow);
        Ok(Some((target, e)))
    }

    /// Both ends' addresses and where a cell's flow goes: the pod, or the
    /// backend its Service port resolves to; None when the Service has no
    /// endpoint for the port.
    fn cell_target(&mut self, from: &PodRef, to: &PodRef, p: &Probe) -> Result<Option<(PodAddr, PodAddr, Target)>> {
        let v6 = p.family == Family::IPv6;
        let src = self.pods.get(from).with_context(|| format!("no pod {from}"))?.addr;
        let dst = self.pods.get(to).with_context(|| format!("no pod {to}"))?.addr;
        let target = match p.via {
            Via::Pod => Target { dialed: (dst.ip(v6), p.port), backend: (dst.ip(v6), p.port) },
            Via::Service => match self.service_target(to, p.port, p.protocol, v6)? {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        Ok(Some((src, dst, target)))
    }

    fn run_cell(&mut self, from: &PodRef, to: &PodRef, p: &Probe) -> Result<(Observed, Option<String>)> {
        let v6 = p.family == Family::IPv6;
        let Some((src, dst, target)) = self.cell_target(from, to, p)? else {
            let why = format!("the Service of {to} has no endpoint for {}/{}: no DNAT target", p.port, p.protocol);
            return Ok((Observed::Blocked, Some(why)));
        };
        // Distinct source ports as well as a flush: a flow of an earlier
        // cell can never be the one this cell finds.
        self.sport_seq = self.sport_seq.wrapping_add(1);
        let sport = 33000 + self.sport_seq % 28000;
        let dp = self.root.dp();
        dp.ct_flush()?;
        let counters_before: std::collections::HashMap<abi::CounterKey, u64> =
            dp.counters()?.into_iter().map(|(k, v)| (k, v.packets)).collect();
        let deferred = |dp: &Dataplane| -> Result<u64> {
            Ok(dp.counter(src.ifindex, abi::DIR_EGRESS, abi::R_ALLOW_DEFERRED)?.packets)
        };
        let deferred_before = deferred(dp)?;
        for (i, st) in
            plan_cell(p.protocol, (src.ifindex, src.ip(v6)), dst.ifindex, target, sport).into_iter().enumerate()
        {
            let rc = dp.run(st.hook, &st.frame, st.ifindex).with_context(|| format!("{from} -> {to}: {}", st.what))?;
            if rc != TC_PASS {
                let reasons: Vec<String> = dp
                    .counters()?
                    .into_iter()
                    .filter(|(k, v)| {
                        abi::reason_is_drop(k.reason) && v.packets > counters_before.get(k).copied().unwrap_or(0)
                    })
                    .map(|(k, _)| format!("{} (endpoint {})", abi::reason_name(k.reason), k.endpoint))
                    .collect();
                return Ok((Observed::Blocked, Some(format!("{}: {}", st.what, reasons.join(", ")))));
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
    pub fn probe(&mut self, p: &Probe, pods: &[PodRef]) -> Result<(ProbeOutput, BTreeMap<(PodRef, PodRef), String>)> {
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
            ProbeOutput { port: p.port, protocol: p.protocol.to_string(), results, targets: Default::default() },
            drops,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_yaml_ng::from_value(v).unwrap()
    }

    #[test]
    fn service_families_follow_the_ip_family_policy() {
        let svc = |y: &str| typed::<Service>(serde_yaml_ng::from_str(y).unwrap());
        assert_eq!(service_families(&svc("{spec: {ipFamilyPolicy: PreferDualStack}}")), [false, true]);
        assert_eq!(service_families(&svc("{spec: {}}")), [false]);
        assert_eq!(service_families(&svc("{spec: {ipFamilies: [IPv6]}}")), [true]);
        assert_eq!(
            service_families(&svc("{spec: {ipFamilies: [IPv6], ipFamilyPolicy: RequireDualStack}}")),
            [true, false]
        );
        // The model's Services are dual-stack.
        assert_eq!(service_families(&typed(model::service("x", "a"))), [false, true]);
    }

    #[test]
    fn target_ports_by_number_name_and_protocol() {
        let pod: Pod = typed(model::pod("x", "a", &BTreeMap::new()));
        let view = PodView {
            namespace: "x".into(),
            name: "a".into(),
            labels: BTreeMap::new(),
            ips: vec![],
            ports: pod_ports(&pod),
        };
        let target_port = |t: Option<&str>, port, proto| {
            let t: Option<IntOrString> = t.map(|t| serde_yaml_ng::from_str(t).unwrap());
            services::target_port(t.as_ref(), port, proto, &view)
        };
        assert_eq!(target_port(None, 80, "TCP"), Some(80));
        assert_eq!(target_port(Some("81"), 80, "TCP"), Some(81));
        assert_eq!(target_port(Some("'81'"), 80, "TCP"), Some(81));
        assert_eq!(target_port(Some("serve-81-udp"), 80, "UDP"), Some(81));
        // a name of another protocol is no endpoint
        assert_eq!(target_port(Some("serve-81-udp"), 80, "TCP"), None);
        assert_eq!(target_port(Some("0"), 80, "TCP"), None);
        // The model maps every Service port to the same number.
        for sp in model::service_spec("a")["ports"].as_sequence().unwrap() {
            assert_eq!(sp["port"], sp["targetPort"]);
        }
    }
}
