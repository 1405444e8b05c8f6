//! The ends of a flow named on the command line (`NS/POD`, `svc/NS/NAME`,
//! an IP address) resolved against policyd's store and this node's
//! endpoint records into the flow the dataplane judges: a Service is its
//! ClusterIP and port as dialed, and the backend pod and targetPort
//! kube-proxy DNATs it to.

use super::ApiError;
use crate::engine::explain::{End, Flow};
use crate::engine::ports::protocol_number;
use crate::store::{Key, Store, StoredPod};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::IpAddr;
use weir_common::registry::EndpointRecord;

/// What the caller asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: u8,
}

/// The port (1-65535) of a query, with the fix in the error.
pub fn parse_port(s: &str) -> Result<u16, ApiError> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(ApiError::bad(format!("port {p} is out of range: give a port from 1 to 65535"))),
        Err(_) => Err(ApiError::bad(format!("port {s:?} is not a number: give a port from 1 to 65535"))),
    }
}

/// TCP, UDP or SCTP (any case).
pub fn parse_protocol(s: &str) -> Result<u8, ApiError> {
    protocol_number(Some(&s.to_ascii_uppercase()))
        .ok_or_else(|| ApiError::bad(format!("protocol {s:?} is not one of TCP, UDP, SCTP")))
}

/// A flow as the dataplane judges it, and how it was dialed.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub flow: Flow,
    /// What the client dials: the pod (or address), or the ClusterIP and
    /// Service port.
    pub dialed: (IpAddr, u16),
    /// `namespace/name` of the Service dialed.
    pub service: Option<String>,
    pub notes: Vec<String>,
}

/// One side as named, before the address family is chosen.
struct Named {
    pod: Option<Key>,
    addrs: Vec<IpAddr>,
    service: Option<ServiceEnd>,
}

/// The flow's addresses in one family.
struct Picked {
    src: IpAddr,
    dialed: (IpAddr, u16),
    dst_pod: Option<Key>,
    backend: IpAddr,
    port: u16,
}

struct ServiceEnd {
    key: Key,
    /// (ClusterIP, backend pod, backend address, targetPort) per family.
    targets: Vec<(IpAddr, Key, IpAddr, u16)>,
}

pub fn resolve(store: &Store, records: &[EndpointRecord], q: &Query) -> Result<Resolved, ApiError> {
    let src = name_end(store, records, &q.from, "from", None)?;
    if src.service.is_some() {
        return Err(ApiError::bad(format!(
            "from {:?}: a Service sends nothing; give the client pod (NS/POD) or its IP",
            q.from
        )));
    }
    let dst = name_end(store, records, &q.to, "to", Some((q.port, q.protocol)))?;
    let mut notes = Vec::new();
    // IPv4 when both ends have it, else IPv6.
    let pick = |v6: bool| -> Option<Picked> {
        let src = *src.addrs.iter().find(|a| a.is_ipv6() == v6)?;
        Some(match &dst.service {
            Some(svc) => {
                let (vip, pod, ip, tp) = svc.targets.iter().find(|t| t.0.is_ipv6() == v6)?;
                Picked { src, dialed: (*vip, q.port), dst_pod: Some(pod.clone()), backend: *ip, port: *tp }
            }
            None => {
                let d = *dst.addrs.iter().find(|a| a.is_ipv6() == v6)?;
                Picked { src, dialed: (d, q.port), dst_pod: dst.pod.clone(), backend: d, port: q.port }
            }
        })
    };
    let Some(Picked { src: s, dialed, dst_pod, backend, port }) = pick(false).or_else(|| pick(true)) else {
        return Err(ApiError::bad(format!(
            "from {:?} ({}) and to {:?} ({}) have no address family in common",
            q.from,
            list(&src.addrs),
            q.to,
            list(&dst.service.as_ref().map(|s| s.targets.iter().map(|t| t.2).collect()).unwrap_or(dst.addrs.clone()))
        )));
    };
    let service = dst.service.as_ref().map(|s| format!("{}/{}", s.key.0, s.key.1));
    if let (Some(svc), Some(pod)) = (&service, &dst_pod) {
        notes.push(format!(
            "{svc} port {} is DNATed to backend {}/{} {backend} port {port}; the flow is judged there",
            q.port, pod.0, pod.1
        ));
    }
    Ok(Resolved {
        flow: Flow {
            src: End { addr: s, pod: src.pod },
            dst: End { addr: backend, pod: dst_pod },
            protocol: q.protocol,
            port,
        },
        dialed,
        service,
        notes,
    })
}

fn list(a: &[IpAddr]) -> String {
    if a.is_empty() {
        return "no address".into();
    }
    a.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
}

fn name_end(
    store: &Store,
    records: &[EndpointRecord],
    spec: &str,
    field: &str,
    port: Option<(u16, u8)>,
) -> Result<Named, ApiError> {
    if let Ok(ip) = spec.parse::<IpAddr>() {
        if let (Some(port), Some(svc)) = (port, service_with_vip(store, ip)) {
            return service_end(store, records, svc, port, Some(ip));
        }
        return Ok(Named { pod: pod_at(store, records, ip), addrs: vec![ip], service: None });
    }
    let parts: Vec<&str> = spec.split('/').collect();
    match parts.as_slice() {
        ["svc", ns, name] => {
            let key = (ns.to_string(), name.to_string());
            let Some(port) = port else {
                return Err(ApiError::bad(format!("{field} {spec:?}: a Service can only be a destination")));
            };
            if !store.services.contains_key(&key) {
                return Err(ApiError::not_found(format!(
                    "{field} {spec:?}: no Service {ns}/{name} in this node's view of the cluster (kubectl get service -n {ns} {name})"
                )));
            }
            service_end(store, records, &key, port, None)
        }
        [ns, name] if !ns.is_empty() && !name.is_empty() => {
            let key = (ns.to_string(), name.to_string());
            let Some(pod) = store.pods.get(&key) else {
                return Err(ApiError::not_found(format!(
                    "{field} {spec:?}: unknown pod: no Pod {ns}/{name} in this node's view of the cluster (kubectl get pod -n {ns} {name})"
                )));
            };
            if !crate::engine::pod_takes_part(pod) {
                return Err(ApiError::bad(format!(
                    "{field} {spec:?}: the pod uses the host network or has finished: NetworkPolicy does not apply to it"
                )));
            }
            let addrs = pod_addrs(records, &key, pod);
            if addrs.is_empty() {
                return Err(ApiError::bad(format!("{field} {spec:?}: the pod has no IP address yet")));
            }
            Ok(Named { pod: Some(key), addrs, service: None })
        }
        _ => Err(ApiError::bad(format!(
            "{field} {spec:?}: give NAMESPACE/POD, svc/NAMESPACE/NAME (destination only) or an IP address"
        ))),
    }
}

/// A pod's addresses: its endpoint records' on this node, else its status.
pub fn pod_addrs(records: &[EndpointRecord], key: &Key, pod: &StoredPod) -> Vec<IpAddr> {
    let local: Vec<IpAddr> = records
        .iter()
        .filter(|r| r.pod_namespace == key.0 && r.pod_name == key.1)
        .flat_map(|r| r.ips.iter().copied())
        .collect();
    if !local.is_empty() {
        return local;
    }
    status_addrs(pod)
}

/// A pod's addresses as its status gives them, as the engine reads them
/// ([`StoredPod::status_ips`]: podIPs, else podIP), in the status's order.
/// A podIP beside a podIPs list with no address in it is none of the
/// pod's: the engine gives it no identity there either.
pub fn status_addrs(pod: &StoredPod) -> Vec<IpAddr> {
    pod.status_ips().1.iter().filter_map(|ip| ip.addr()).collect()
}

/// The pod an address belongs to: this node's endpoint records first.
fn pod_at(store: &Store, records: &[EndpointRecord], ip: IpAddr) -> Option<Key> {
    if let Some(r) = records.iter().find(|r| r.ips.contains(&ip)) {
        let key = (r.pod_namespace.clone(), r.pod_name.clone());
        if store.pods.contains_key(&key) {
            return Some(key);
        }
    }
    store
        .pods
        .iter()
        .filter(|(_, p)| crate::engine::pod_takes_part(p))
        .find(|(_, p)| status_addrs(p).contains(&ip))
        .map(|(k, _)| k.clone())
}

fn service_with_vip(store: &Store, ip: IpAddr) -> Option<&Key> {
    store.services.iter().find(|(_, s)| cluster_ips(s).contains(&ip)).map(|(k, _)| k)
}

fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = &svc.spec else { return Vec::new() };
    let mut raw: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
    if raw.is_empty() {
        raw.extend(spec.cluster_ip.iter());
    }
    raw.into_iter().filter_map(|s| s.parse().ok()).collect()
}

/// A Service port's backends, as kube-proxy would DNAT them: the pods its
/// selector selects, the first by name that serves the targetPort per family.
fn service_end(
    store: &Store,
    records: &[EndpointRecord],
    key: &Key,
    (port, protocol): (u16, u8),
    vip: Option<IpAddr>,
) -> Result<Named, ApiError> {
    let svc = &store.services[key];
    let name = format!("svc/{}/{}", key.0, key.1);
    let spec = svc.spec.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let Some(sp) =
        ports.iter().find(|sp| sp.port == port as i32 && protocol_number(sp.protocol.as_deref()) == Some(protocol))
    else {
        let have: Vec<String> =
            ports.iter().map(|sp| format!("{}/{}", sp.port, sp.protocol.as_deref().unwrap_or("TCP"))).collect();
        return Err(ApiError::bad(format!(
            "to {name:?}: the Service has no port {port}/{} (it has: {})",
            proto_name(protocol),
            if have.is_empty() { "none".to_string() } else { have.join(", ") }
        )));
    };
    let vips: Vec<IpAddr> = cluster_ips(svc).into_iter().filter(|v| vip.is_none_or(|w| w == *v)).collect();
    if vips.is_empty() {
        return Err(ApiError::bad(format!(
            "to {name:?}: the Service has no ClusterIP (headless): name the backend pod (NS/POD) instead"
        )));
    }
    let selector = spec.selector.clone().unwrap_or_default();
    let mut targets = Vec::new();
    if !selector.is_empty() {
        for vip in &vips {
            let found = store
                .pods
                .range((key.0.clone(), String::new())..)
                .take_while(|(k, _)| k.0 == key.0)
                .filter(|(_, p)| crate::engine::pod_takes_part(p) && selects(&selector, p))
                .find_map(|(k, p)| {
                    let tp = target_port(sp.target_port.as_ref(), port, |n| named_port(p, n, protocol))?;
                    let ip = pod_addrs(records, k, p).into_iter().find(|a| a.is_ipv6() == vip.is_ipv6())?;
                    Some((*vip, k.clone(), ip, tp))
                });
            targets.extend(found);
        }
    }
    if targets.is_empty() {
        return Err(ApiError::bad(format!(
            "to {name:?}: no pod serves port {port}/{} of the Service (no selected pod, or none with its targetPort): nothing to judge",
            proto_name(protocol)
        )));
    }
    Ok(Named { pod: None, addrs: Vec::new(), service: Some(ServiceEnd { key: key.clone(), targets }) })
}

pub fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "?",
    }
}

/// Whether a Service's (equality) selector selects a pod's labels.
pub fn selector_selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn selects(selector: &BTreeMap<String, String>, pod: &StoredPod) -> bool {
    selector_selects(selector, &pod.labels)
}

fn named_port(pod: &StoredPod, name: &str, protocol: u8) -> Option<u16> {
    crate::engine::pod_container_ports(pod).find(|(n, p, _)| *n == name && *p == protocol).map(|(_, _, num)| num)
}

/// The port a backend serves a Service port on, as kube-proxy maps it: the
/// Service port itself when targetPort is absent, the number, or the
/// backend's containerPort of that name (`named`); None: the pod is no
/// endpoint of that port.
pub fn target_port(target: Option<&IntOrString>, port: u16, named: impl Fn(&str) -> Option<u16>) -> Option<u16> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n != 0),
        Some(IntOrString::String(name)) => match name.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => named(name),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn store() -> Store {
        let mut s = Store::default();
        let pod = |ns: &str, name: &str, labels: serde_json::Value, ips: &[&str], ports: serde_json::Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name, "labels": labels},
                "spec": {"containers": [{"name": "c", "ports": ports}]},
                "status": {"phase": "Running", "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}
            }))
            .unwrap()
        };
        s.pods.insert(
            ("x".into(), "a".into()),
            pod(
                "x",
                "a",
                json!({"app": "a"}),
                &["10.0.0.1", "fd00::1"],
                json!([{"name": "web", "containerPort": 8080}]),
            ),
        );
        s.pods
            .insert(("x".into(), "b".into()), pod("x", "b", json!({"app": "b"}), &["10.0.0.2", "fd00::2"], json!([])));
        s.pods.insert(("x".into(), "six".into()), pod("x", "six", json!({"app": "six"}), &["fd00::6"], json!([])));
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": "web"},
            "spec": {"selector": {"app": "a"}, "clusterIPs": ["10.96.0.10", "fd96::10"],
                     "ports": [{"port": 80, "targetPort": "web"}, {"port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        s.services.insert(("x".into(), "web".into()), svc);
        s
    }

    fn q(from: &str, to: &str, port: u16, protocol: u8) -> Query {
        Query { from: from.into(), to: to.into(), port, protocol }
    }

    #[test]
    fn a_service_is_dialed_at_its_vip_and_judged_at_the_backend_target_port() {
        let r = resolve(&store(), &[], &q("x/b", "svc/x/web", 80, 6)).unwrap();
        assert_eq!(r.dialed, ("10.96.0.10".parse().unwrap(), 80));
        assert_eq!(r.flow.dst.addr, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.flow.port, 8080, "targetPort by name");
        assert_eq!(r.flow.dst.pod, Some(("x".into(), "a".into())));
        assert_eq!(r.service.as_deref(), Some("x/web"));
        // The VIP itself names the Service too.
        let by_vip = resolve(&store(), &[], &q("x/b", "fd96::10", 80, 6)).unwrap();
        assert_eq!((by_vip.flow.dst.addr, by_vip.flow.port), ("fd00::1".parse().unwrap(), 8080));
        assert_eq!(by_vip.flow.src.addr, "fd00::2".parse::<IpAddr>().unwrap(), "the family of the address given");
    }

    /// The engine reads podIPs when the list is there, podIP only when it
    /// is not: so does the resolver, whatever the list holds.
    #[test]
    fn a_pod_s_addresses_are_the_ones_the_engine_reads() {
        let mut s = store();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": "odd"},
            "status": {"phase": "Running", "podIP": "10.0.0.7", "podIPs": [{"ip": "not-an-ip"}]}
        }))
        .unwrap();
        s.pods.insert(("x".into(), "odd".into()), pod);
        let e = resolve(&s, &[], &q("x/odd", "x/a", 8080, 6)).unwrap_err();
        assert!(e.message.contains("no IP address yet"), "{}", e.message);
        let r = resolve(&s, &[], &q("10.0.0.7", "x/a", 8080, 6)).unwrap();
        assert_eq!(r.flow.src.pod, None);
        let d = crate::engine::Engine::new().compile(&s, &[]);
        assert!(d.diagnostics.iter().any(|g| g.field == "status.podIPs[0].ip"), "{:?}", d.diagnostics);
    }

    #[test]
    fn addresses_name_their_pod_or_none() {
        let r = resolve(&store(), &[], &q("10.0.0.2", "x/a", 8080, 6)).unwrap();
        assert_eq!(r.flow.src.pod, Some(("x".into(), "b".into())));
        let r = resolve(&store(), &[], &q("x/b", "192.0.2.1", 443, 6)).unwrap();
        assert_eq!(r.flow.dst.pod, None);
        // IPv4 unless only IPv6 is common.
        let r = resolve(&store(), &[], &q("x/b", "x/six", 80, 6)).unwrap();
        assert_eq!(r.flow.src.addr, "fd00::2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn bad_input_is_an_error_naming_the_field_and_the_fix() {
        let err = |from: &str, to: &str, port: u16, p: u8| resolve(&store(), &[], &q(from, to, port, p)).unwrap_err();
        let e = err("x/nope", "x/a", 80, 6);
        assert_eq!(e.code, 404);
        assert!(e.message.contains("unknown pod") && e.message.contains("kubectl get pod -n x nope"), "{}", e.message);
        let e = err("x/b", "svc/x/gone", 80, 6);
        assert_eq!(e.code, 404);
        let e = err("x/b", "svc/x/web", 81, 6);
        assert!(e.message.contains("no port 81/TCP") && e.message.contains("80/TCP, 53/UDP"), "{}", e.message);
        let e = err("svc/x/web", "x/a", 80, 6);
        assert!(
            e.message.contains("a Service can only be a destination") || e.message.contains("sends nothing"),
            "{}",
            e.message
        );
        let e = err("x/a/b/c", "x/a", 80, 6);
        assert!(e.message.contains("give NAMESPACE/POD"), "{}", e.message);
        let e = err("192.0.2.1", "x/six", 80, 6);
        assert!(e.message.contains("no address family in common"), "{}", e.message);
        assert!(parse_port("0").unwrap_err().message.contains("out of range"));
        assert!(parse_port("65536").unwrap_err().message.contains("1 to 65535"));
        assert!(parse_port("http").unwrap_err().message.contains("not a number"));
        assert_eq!(parse_port("65535").unwrap(), 65535);
        assert_eq!(parse_protocol("sctp").unwrap(), 132);
        assert!(parse_protocol("icmp").unwrap_err().message.contains("TCP, UDP, SCTP"));
    }

    #[test]
    fn target_ports_follow_kube_proxy() {
        let named = |n: &str| (n == "web").then_some(8080);
        assert_eq!(target_port(None, 80, named), Some(80));
        assert_eq!(target_port(Some(&IntOrString::Int(81)), 80, named), Some(81));
        assert_eq!(target_port(Some(&IntOrString::String("82".into())), 80, named), Some(82));
        assert_eq!(target_port(Some(&IntOrString::String("web".into())), 80, named), Some(8080));
        assert_eq!(target_port(Some(&IntOrString::String("nope".into())), 80, named), None);
        assert_eq!(target_port(Some(&IntOrString::Int(0)), 80, named), None);
    }
}
