//! ClusterIP Services the way kube-proxy makes them work: an address from the
//! service CIDR, endpoints from the selector (targetPort by number or by the
//! backend pod's containerPort name), and DNAT rules (nftables, numgen random
//! across backends) in the node netns. All pure; `apply` hands the text to
//! `nft -f -`.

use anyhow::{bail, Result};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

/// Table the lab owns in the node netns; replaced whole on every change so
/// stale rules can never linger.
pub const TABLE: &str = "weir_lab_services";
/// Marks hairpin traffic (a pod reaching itself via its Service) for
/// masquerade: without it the pod would receive a packet from its own address
/// and drop it as a martian, exactly why kube-proxy masquerades hairpins.
pub const MASQ_MARK: u32 = 0x4000;

/// What the rules need to know about a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    /// (containerPort, protocol, name)
    pub ports: Vec<(u16, String, Option<String>)>,
}

/// One (VIP, port, protocol) and where it leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRule {
    /// `ns/name:port/PROTO` for comments and messages.
    pub service: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// (pod `ns/name`, pod IP, target port)
    pub backends: Vec<(String, IpAddr, u16)>,
}

pub fn is_ipv4_family(f: &str) -> bool {
    f == "IPv4"
}

/// The families a Service gets addresses in, by its ipFamilyPolicy and
/// ipFamilies (the API server's defaulting in a dual-stack cluster whose
/// primary family is IPv4).
pub fn service_families(svc: &Service) -> Vec<&'static str> {
    let spec = svc.spec.as_ref();
    let requested: Vec<&'static str> = spec
        .and_then(|s| s.ip_families.as_ref())
        .map(|v| v.iter().map(|f| if f == "IPv6" { "IPv6" } else { "IPv4" }).collect())
        .unwrap_or_default();
    let policy = spec.and_then(|s| s.ip_family_policy.as_deref()).unwrap_or("SingleStack");
    let mut fams = if requested.is_empty() { vec!["IPv4"] } else { requested };
    if policy != "SingleStack" {
        for f in ["IPv4", "IPv6"] {
            if !fams.contains(&f) {
                fams.push(f);
            }
        }
    } else {
        fams.truncate(1);
    }
    fams
}

/// Allocates ClusterIPs from the service CIDRs, skipping the first ten
/// addresses (reserved for cluster DNS and the API service by convention).
#[derive(Debug, Clone)]
pub struct Allocator {
    pub v4: IpNet,
    pub v6: IpNet,
    pub used: BTreeSet<IpAddr>,
}

impl Allocator {
    pub fn new(v4: IpNet, v6: IpNet) -> Self {
        Allocator { v4, v6, used: BTreeSet::new() }
    }

    fn cidr(&self, fam: &str) -> IpNet {
        if is_ipv4_family(fam) {
            self.v4
        } else {
            self.v6
        }
    }

    /// ClusterIPs for `svc`: the ones it asks for (validated) or fresh ones.
    /// `None` (headless) and ExternalName Services get none.
    pub fn assign(&mut self, svc: &Service, key: &str) -> Result<Vec<IpAddr>> {
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            return Ok(vec![]);
        }
        let mut requested: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
        if requested.is_empty() {
            if let Some(ip) = spec.cluster_ip.clone() {
                requested.push(ip);
            }
        }
        if requested.iter().any(|s| s == "None") {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        for fam in service_families(svc) {
            let cidr = self.cidr(fam);
            let wanted = requested.iter().filter(|s| !s.is_empty()).find_map(|s| {
                let ip: IpAddr = s.parse().ok()?;
                (ip.is_ipv4() == is_ipv4_family(fam)).then_some(ip)
            });
            let ip = match wanted {
                Some(ip) => {
                    if !cidr.contains(&ip) {
                        bail!("Service {key}: spec.clusterIP {ip} is outside the lab's service CIDR {cidr}; pick an address in it or leave the field empty");
                    }
                    if self.used.contains(&ip) {
                        bail!("Service {key}: spec.clusterIP {ip} is already allocated to another Service; leave the field empty to get a free one");
                    }
                    ip
                }
                None => self
                    .next_free(cidr)
                    .ok_or_else(|| anyhow::anyhow!("Service {key}: the service CIDR {cidr} is exhausted"))?,
            };
            self.used.insert(ip);
            out.push(ip);
        }
        for s in &requested {
            if !s.is_empty() && s.parse::<IpAddr>().is_err() {
                bail!("Service {key}: spec.clusterIP {s:?} is not an IP address (or \"None\")");
            }
        }
        Ok(out)
    }

    fn next_free(&self, cidr: IpNet) -> Option<IpAddr> {
        // network + 10 onwards: the first ten are reserved by convention
        // (same offset in both families; hosts() differs between them).
        let (base, last): (u128, u128) = match cidr {
            IpNet::V4(n) => (u32::from(n.network()) as u128, u32::from(n.broadcast()) as u128 - 1),
            IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
        };
        (base + 10..=last)
            .take(1 << 16)
            .map(|i| match cidr {
                IpNet::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(i as u32)),
                IpNet::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(i)),
            })
            .find(|ip| !self.used.contains(ip))
    }
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    weir_policyd::api::resolve::selector_selects(selector, labels)
}

/// The pods a Service selects (its namespace, every selector label). A
/// Service without a selector (or with an empty one) has no managed
/// endpoints.
pub fn selected_pods<'a>(svc: &Service, pods: &'a [PodView]) -> Vec<&'a PodView> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else { return vec![] };
    if sel.is_empty() {
        return vec![];
    }
    pods.iter().filter(|p| p.namespace == ns && selects(sel, &p.labels)).collect()
}

/// The port a backend pod serves a Service port on: the number itself, or
/// the pod's containerPort of that name and protocol (a pod without it is no
/// endpoint for that port, as in Kubernetes).
pub fn target_port(target: Option<&IntOrString>, port: u16, protocol: &str, pod: &PodView) -> Option<u16> {
    weir_policyd::api::resolve::target_port(target, port, |name| {
        pod.ports.iter().find(|(_, proto, n)| n.as_deref() == Some(name) && proto == protocol).map(|(p, _, _)| *p)
    })
}

/// Where a probe of one pod "via its Service" goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The ClusterIP and Service port the client dials.
    pub vip: IpAddr,
    pub port: u16,
    /// The port the pod serves it on (kube-proxy's DNAT); None: the pod is
    /// no endpoint of that port (a targetPort name it lacks), so the DNAT
    /// drops the connection.
    pub target_port: Option<u16>,
}

/// The Service a probe of pod `dst` (namespace, name) dials: in dst's
/// namespace, selecting only dst, exposing `port`/`protocol`, with a
/// ClusterIP of the family; the model's `s-<ns>-<pod>` first. `services`
/// pairs each Service with its assigned ClusterIPs.
pub fn probe_target<'a>(
    services: impl IntoIterator<Item = (&'a Service, &'a [IpAddr])>,
    pods: &[PodView],
    dst: (&str, &str),
    port: u16,
    protocol: &str,
    ipv6: bool,
) -> Result<ProbeTarget, String> {
    let (namespace, name) = dst;
    let preferred = format!("s-{namespace}-{name}");
    let mut cands: Vec<(bool, ProbeTarget)> = Vec::new();
    for (svc, ips) in services {
        if svc.metadata.namespace.as_deref().unwrap_or("default") != namespace {
            continue;
        }
        let sel = selected_pods(svc, pods);
        if sel.len() != 1 || sel[0].name != name {
            continue;
        }
        let Some(sp) = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .find(|sp| sp.port as u16 == port && sp.protocol.as_deref().unwrap_or("TCP") == protocol)
        else {
            continue;
        };
        if let Some(vip) = ips.iter().find(|i| i.is_ipv6() == ipv6) {
            let target_port = target_port(sp.target_port.as_ref(), port, protocol, sel[0]);
            let svc_name = svc.metadata.name.as_deref().unwrap_or("");
            cands.push((svc_name == preferred, ProbeTarget { vip: *vip, port, target_port }));
        }
    }
    cands.sort_by_key(|(pref, _)| !*pref);
    cands.first().map(|(_, t)| *t).ok_or_else(|| {
        format!(
            "pod {namespace}/{name} has no Service selecting only it with port {port}/{protocol}{}",
            if ipv6 { " and an IPv6 ClusterIP" } else { "" }
        )
    })
}

/// Rules for one Service with its ClusterIPs already assigned.
pub fn service_rules(svc: &Service, cluster_ips: &[IpAddr], pods: &[PodView]) -> Vec<ServiceRule> {
    let key = format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or("default"),
        svc.metadata.name.as_deref().unwrap_or("")
    );
    let selected = selected_pods(svc, pods);
    let mut out = Vec::new();
    for sp in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
        let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        let port = sp.port as u16;
        for vip in cluster_ips {
            let mut backends = Vec::new();
            for pod in &selected {
                let Some(tp) = target_port(sp.target_port.as_ref(), port, &protocol, pod) else { continue };
                for ip in pod.ips.iter().filter(|ip| ip.is_ipv4() == vip.is_ipv4()) {
                    backends.push((format!("{}/{}", pod.namespace, pod.name), *ip, tp));
                }
            }
            out.push(ServiceRule {
                service: format!("{key}:{port}/{protocol}"),
                vip: *vip,
                port,
                protocol: protocol.clone(),
                backends,
            });
        }
    }
    out
}

fn fam(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

fn hostport(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The whole nftables table as one `nft -f` transaction (create-then-delete
/// the table first so the load replaces it atomically even when absent).
pub fn nft_ruleset(rules: &[ServiceRule]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{");
    let _ =
        writeln!(s, "  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}");
    let _ = writeln!(s, "  chain output {{ type nat hook output priority -100; policy accept; jump services; }}");
    let _ = writeln!(
        s,
        "  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} masquerade; }}"
    );
    let mut chains = String::new();
    let _ = writeln!(s, "  chain services {{");
    for (i, r) in rules.iter().enumerate() {
        let proto = r.protocol.to_ascii_lowercase();
        let comment = r.service.replace('"', "");
        if r.backends.is_empty() {
            // No endpoints: kube-proxy rejects; the lab drops, so the client
            // sees a timeout rather than a connection to nothing.
            let _ = writeln!(
                s,
                "    {} daddr {} {proto} dport {} drop comment \"{comment} has no endpoints\"",
                fam(&r.vip),
                r.vip,
                r.port
            );
            continue;
        }
        let _ = writeln!(
            s,
            "    {} daddr {} {proto} dport {} goto svc_{i} comment \"{comment}\"",
            fam(&r.vip),
            r.vip,
            r.port
        );
        let _ = write!(chains, "  chain svc_{i} {{ numgen random mod {} vmap {{ ", r.backends.len());
        let arms: Vec<String> = (0..r.backends.len()).map(|j| format!("{j} : goto svc_{i}_ep{j}")).collect();
        let _ = writeln!(chains, "{} }}; }}", arms.join(", "));
        for (j, (pod, ip, tp)) in r.backends.iter().enumerate() {
            let f = fam(ip);
            let _ = writeln!(
                chains,
                "  chain svc_{i}_ep{j} {{ {f} saddr {ip} meta mark set meta mark | {MASQ_MARK:#x}; meta l4proto {proto} counter dnat {f} to {} comment \"{pod}\"; }}",
                hostport(ip, *tp)
            );
        }
    }
    let _ = writeln!(s, "  }}");
    s.push_str(&chains);
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    fn pod(ns: &str, name: &str, ips: &[&str]) -> PodView {
        PodView {
            namespace: ns.into(),
            name: name.into(),
            labels: [("pod".to_string(), name.to_string())].into(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            ports: vec![
                (80, "TCP".into(), Some("serve-80-tcp".into())),
                (81, "UDP".into(), Some("serve-81-udp".into())),
            ],
        }
    }

    fn svc(ns: &str, name: &str, sel: &str, ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("pod".to_string(), sel.to_string())].into()),
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sp(port: i32, proto: &str, target: Option<IntOrString>) -> ServicePort {
        ServicePort { port, protocol: Some(proto.into()), target_port: target, ..Default::default() }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn allocation_sequential_requested_and_conflicts() {
        let mut a = Allocator::new(net("10.96.0.0/16"), net("fd00:96::/108"));
        let s = svc("x", "s", "a", vec![]);
        assert_eq!(a.assign(&s, "x/s").unwrap(), vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.assign(&s, "x/s2").unwrap(), vec!["10.96.0.11".parse::<IpAddr>().unwrap()]);
        let mut dual = s.clone();
        dual.spec.as_mut().unwrap().ip_family_policy = Some("PreferDualStack".into());
        let ips = a.assign(&dual, "x/d").unwrap();
        assert_eq!(ips, vec!["10.96.0.12".parse::<IpAddr>().unwrap(), "fd00:96::a".parse().unwrap()]);
        let mut fixed = s.clone();
        fixed.spec.as_mut().unwrap().cluster_ip = Some("10.96.5.5".into());
        assert_eq!(a.assign(&fixed, "x/f").unwrap(), vec!["10.96.5.5".parse::<IpAddr>().unwrap()]);
        assert!(a.assign(&fixed, "x/f2").unwrap_err().to_string().contains("already allocated"));
        fixed.spec.as_mut().unwrap().cluster_ip = Some("10.97.0.1".into());
        assert!(a.assign(&fixed, "x/f3").unwrap_err().to_string().contains("outside"));
        fixed.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        assert!(a.assign(&fixed, "x/h").unwrap().is_empty());
        let mut v6 = s.clone();
        v6.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
        assert_eq!(a.assign(&v6, "x/6").unwrap(), vec!["fd00:96::b".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn endpoints_by_selector_and_named_target_port() {
        let pods = vec![
            pod("x", "a", &["10.88.0.2", "fd00:88::2"]),
            pod("x", "b", &["10.88.0.3"]),
            pod("y", "a", &["10.88.0.4"]),
        ];
        let s = svc(
            "x",
            "s-x-a",
            "a",
            vec![
                sp(80, "TCP", Some(IntOrString::String("serve-80-tcp".into()))),
                sp(8081, "UDP", Some(IntOrString::Int(81))),
                sp(90, "TCP", Some(IntOrString::String("no-such-port".into()))),
            ],
        );
        let vips: Vec<IpAddr> = vec!["10.96.0.10".parse().unwrap(), "fd00:96::a".parse().unwrap()];
        let rules = service_rules(&s, &vips, &pods);
        assert_eq!(rules.len(), 6);
        assert_eq!(rules[0].backends, vec![("x/a".to_string(), "10.88.0.2".parse().unwrap(), 80)]);
        assert_eq!(rules[1].backends, vec![("x/a".to_string(), "fd00:88::2".parse().unwrap(), 80)]);
        assert_eq!(rules[2].port, 8081);
        assert_eq!(rules[2].backends[0].2, 81);
        assert!(rules[4].backends.is_empty(), "named port the pod lacks: no endpoint");
        // a name is matched per protocol too
        let udp_named = sp(80, "UDP", Some(IntOrString::String("serve-80-tcp".into())));
        let r = service_rules(&svc("x", "u", "a", vec![udp_named]), &vips[..1], &pods);
        assert!(r[0].backends.is_empty());
    }

    #[test]
    fn selector_nothing_and_empty() {
        let pods = vec![pod("x", "a", &["10.88.0.2"])];
        assert!(selected_pods(&svc("x", "s", "zzz", vec![]), &pods).is_empty());
        let mut s = svc("x", "s", "a", vec![]);
        s.spec.as_mut().unwrap().selector = Some(BTreeMap::new());
        assert!(selected_pods(&s, &pods).is_empty());
        assert_eq!(selected_pods(&svc("x", "s", "a", vec![]), &pods).len(), 1);
        assert!(selected_pods(&svc("y", "s", "a", vec![]), &pods).is_empty(), "other namespace");
    }

    #[test]
    fn nft_text_balances_and_masquerades_hairpin() {
        let rules = vec![
            ServiceRule {
                service: "x/s:80/TCP".into(),
                vip: "10.96.0.10".parse().unwrap(),
                port: 80,
                protocol: "TCP".into(),
                backends: vec![
                    ("x/a".into(), "10.88.0.2".parse().unwrap(), 8080),
                    ("x/b".into(), "10.88.0.3".parse().unwrap(), 8080),
                ],
            },
            ServiceRule {
                service: "x/s:53/UDP".into(),
                vip: "fd00:96::a".parse().unwrap(),
                port: 53,
                protocol: "UDP".into(),
                backends: vec![("x/a".into(), "fd00:88::2".parse().unwrap(), 5353)],
            },
            ServiceRule {
                service: "x/e:1/TCP".into(),
                vip: "10.96.0.11".parse().unwrap(),
                port: 1,
                protocol: "TCP".into(),
                backends: vec![],
            },
        ];
        let t = nft_ruleset(&rules);
        assert!(t.starts_with("table inet weir_lab_services {}\ndelete table inet weir_lab_services\n"), "{t}");
        assert!(t.contains("ip daddr 10.96.0.10 tcp dport 80 goto svc_0"), "{t}");
        assert!(t.contains("numgen random mod 2 vmap { 0 : goto svc_0_ep0, 1 : goto svc_0_ep1 }"), "{t}");
        assert!(t.contains("chain svc_0_ep1 { ip saddr 10.88.0.3 meta mark set meta mark | 0x4000; meta l4proto tcp counter dnat ip to 10.88.0.3:8080"), "{t}");
        assert!(t.contains("ip6 daddr fd00:96::a udp dport 53 goto svc_1"), "{t}");
        assert!(t.contains("dnat ip6 to [fd00:88::2]:5353"), "{t}");
        assert!(t.contains("ip daddr 10.96.0.11 tcp dport 1 drop"), "{t}");
        assert!(t.contains("meta mark & 0x4000 == 0x4000 masquerade"), "{t}");
        // braces balance, so nft sees one table
        assert_eq!(t.matches('{').count(), t.matches('}').count());
    }
}
