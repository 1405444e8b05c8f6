//! A small cluster drawn from fuzz bytes: up to three namespaces, a few
//! pods with labels, addresses and named container ports, a few
//! NetworkPolicies with selectors, ipBlocks and ports (numbers, ranges,
//! names, invalid ones). Values come from small vocabularies so that
//! selectors and names meet; the cluster is written as a manifest and read
//! back by policyd's own manifest parser, so both are exercised.

use arbitrary::Arbitrary;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use weir_common::registry::EndpointRecord;

const NAMESPACES: usize = 3;
const MAX_PODS: usize = 8;
const MAX_POLICIES: usize = 4;
const MAX_LIST: usize = 3;

const KEYS: &[&str] = &["app", "tier", "kubernetes.io/metadata.name", "role", ""];
const VALUES: &[&str] = &["a", "b", "ns0", "ns1", ""];
const OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist", "in", ""];
const PORT_NAMES: &[&str] = &["http", "dns", "metrics", "Bad", "80", "a--b", ""];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP", "tcp", "ICMP"];
const PHASES: &[&str] = &["Running", "Pending", "Succeeded", "Failed", ""];
const POLICY_TYPES: &[&str] = &["Ingress", "Egress", "Other"];
/// Port numbers near each other and near block boundaries.
const PORTS: &[i32] = &[53, 80, 81, 443, 1000, 1023, 1024, 2000, 8080, 65535, 0, -1, 65536];

fn pick<'a>(v: &[&'a str], i: u8) -> &'a str {
    v[i as usize % v.len()]
}

fn take<T>(v: &[T], n: usize) -> &[T] {
    &v[..v.len().min(n)]
}

#[derive(Debug, Arbitrary)]
pub struct Cluster {
    namespaces: [Vec<Label>; NAMESPACES],
    pods: Vec<PodIn>,
    policies: Vec<PolicyIn>,
}

#[derive(Debug, Arbitrary)]
struct Label(u8, u8);

#[derive(Debug, Arbitrary)]
struct PodIn {
    ns: u8,
    labels: Vec<Label>,
    phase: u8,
    host_network: bool,
    /// Last octet of 10.0.0.x / fd00::x, from a small range so pods
    /// sometimes share an address.
    ip: u8,
    dual_stack: bool,
    local: bool,
    ports: Vec<ContainerPort>,
}

#[derive(Debug, Arbitrary)]
struct ContainerPort {
    name: u8,
    protocol: u8,
    number: u8,
    /// In a restartable init container (a sidecar) rather than a container.
    sidecar: bool,
}

#[derive(Debug, Arbitrary)]
struct PolicyIn {
    ns: u8,
    pod_selector: Option<Selector>,
    policy_types: Option<Vec<u8>>,
    ingress: Option<Vec<RuleIn>>,
    egress: Option<Vec<RuleIn>>,
}

#[derive(Debug, Arbitrary)]
struct RuleIn {
    peers: Option<Vec<PeerIn>>,
    ports: Option<Vec<PortIn>>,
}

#[derive(Debug, Arbitrary)]
enum PeerIn {
    Pods(Selector),
    Namespaces(Selector),
    Both(Selector, Selector),
    Block(Cidr, Vec<Cidr>),
    BlockAndPods(Cidr, Selector),
    Empty,
}

#[derive(Debug, Arbitrary)]
struct Selector {
    match_labels: Vec<Label>,
    expressions: Vec<Expression>,
}

#[derive(Debug, Arbitrary)]
struct Expression {
    key: u8,
    operator: u8,
    values: Option<Vec<u8>>,
}

#[derive(Debug, Arbitrary)]
enum Cidr {
    /// 10.0.a.b/len: covers pod addresses for some lengths.
    V4(u8, u8, u8),
    V6(u8, u8),
    Garbage,
    BareAddress,
}

#[derive(Debug, Arbitrary)]
struct PortIn {
    protocol: Option<u8>,
    port: PortValue,
    end_port: Option<u8>,
}

#[derive(Debug, Arbitrary)]
enum PortValue {
    Absent,
    Number(u8),
    Name(u8),
}

impl Label {
    fn kv(&self) -> (String, Value) {
        (pick(KEYS, self.0).to_string(), json!(pick(VALUES, self.1)))
    }
}

fn labels(ls: &[Label]) -> Map<String, Value> {
    take(ls, MAX_LIST).iter().map(Label::kv).collect()
}

impl Selector {
    fn json(&self) -> Value {
        let exprs: Vec<Value> = take(&self.expressions, 2)
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("key".into(), json!(pick(KEYS, e.key)));
                m.insert("operator".into(), json!(pick(OPERATORS, e.operator)));
                if let Some(vs) = &e.values {
                    m.insert("values".into(), take(vs, MAX_LIST).iter().map(|v| json!(pick(VALUES, *v))).collect());
                }
                Value::Object(m)
            })
            .collect();
        json!({"matchLabels": labels(&self.match_labels), "matchExpressions": exprs})
    }
}

impl Cidr {
    fn text(&self) -> String {
        match self {
            Cidr::V4(c, d, len) => format!("10.0.{}.{}/{}", c % 2, d, len % 35),
            Cidr::V6(d, len) => format!("fd00::{:x}/{}", d, 100 + len % 30),
            Cidr::Garbage => "garbage".into(),
            Cidr::BareAddress => "10.0.0.1".into(),
        }
    }
}

impl PortIn {
    fn json(&self) -> Value {
        let mut m = Map::new();
        if let Some(p) = self.protocol {
            m.insert("protocol".into(), json!(pick(PROTOCOLS, p)));
        }
        match self.port {
            PortValue::Absent => {}
            PortValue::Number(i) => {
                m.insert("port".into(), json!(PORTS[i as usize % PORTS.len()]));
            }
            PortValue::Name(i) => {
                m.insert("port".into(), json!(pick(PORT_NAMES, i)));
            }
        }
        if let Some(e) = self.end_port {
            m.insert("endPort".into(), json!(PORTS[e as usize % PORTS.len()]));
        }
        Value::Object(m)
    }
}

impl PeerIn {
    fn json(&self) -> Value {
        let block = |c: &Cidr, ex: &[Cidr]| json!({"cidr": c.text(), "except": take(ex, MAX_LIST).iter().map(Cidr::text).collect::<Vec<_>>()});
        match self {
            PeerIn::Pods(s) => json!({"podSelector": s.json()}),
            PeerIn::Namespaces(s) => json!({"namespaceSelector": s.json()}),
            PeerIn::Both(p, n) => json!({"podSelector": p.json(), "namespaceSelector": n.json()}),
            PeerIn::Block(c, ex) => json!({"ipBlock": block(c, ex)}),
            PeerIn::BlockAndPods(c, s) => {
                json!({"ipBlock": block(c, &[]), "podSelector": s.json()})
            }
            PeerIn::Empty => json!({}),
        }
    }
}

fn rules(rs: &[RuleIn], peer_key: &str) -> Value {
    take(rs, MAX_LIST)
        .iter()
        .map(|r| {
            let mut m = Map::new();
            if let Some(ps) = &r.peers {
                m.insert(peer_key.into(), take(ps, MAX_LIST).iter().map(PeerIn::json).collect());
            }
            if let Some(ps) = &r.ports {
                m.insert("ports".into(), take(ps, MAX_LIST).iter().map(PortIn::json).collect());
            }
            Value::Object(m)
        })
        .collect()
}

/// The node's gateway addresses, as CNI ADD records them.
pub const GATEWAYS: [&str; 2] = ["10.0.0.1", "fd00::1"];

impl Cluster {
    /// The cluster as one manifest (a `kind: List`), and the endpoint
    /// records of its local pods (ifindex 100 + pod index).
    pub fn manifest(&self) -> (String, Vec<EndpointRecord>) {
        let mut items = Vec::new();
        for (i, ls) in self.namespaces.iter().enumerate() {
            items.push(json!({"apiVersion": "v1", "kind": "Namespace",
                              "metadata": {"name": format!("ns{i}"), "labels": labels(ls)}}));
        }
        let mut locals = Vec::new();
        for (i, p) in take(&self.pods, MAX_PODS).iter().enumerate() {
            let (ns, name) = (format!("ns{}", p.ns as usize % NAMESPACES), format!("p{i}"));
            let mut ips: Vec<IpAddr> = vec![format!("10.0.0.{}", 2 + p.ip % 12).parse().unwrap()];
            if p.dual_stack {
                ips.push(format!("fd00::{:x}", 2 + p.ip % 12).parse().unwrap());
            }
            let port = |c: &ContainerPort| {
                json!({"name": pick(PORT_NAMES, c.name), "protocol": pick(PROTOCOLS, c.protocol),
                       "containerPort": PORTS[c.number as usize % PORTS.len()]})
            };
            let ports = take(&p.ports, MAX_LIST);
            let main: Vec<Value> = ports.iter().filter(|c| !c.sidecar).map(port).collect();
            let sidecar: Vec<Value> = ports.iter().filter(|c| c.sidecar).map(port).collect();
            items.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": ns, "name": name, "labels": labels(&p.labels)},
                "spec": {"hostNetwork": p.host_network,
                         "containers": [{"name": "c", "ports": main}],
                         "initContainers": [{"name": "s", "restartPolicy": "Always", "ports": sidecar}]},
                "status": {"phase": pick(PHASES, p.phase),
                           "podIPs": ips.iter().map(|a| json!({"ip": a.to_string()})).collect::<Vec<_>>()}}));
            if p.local {
                locals.push(EndpointRecord {
                    container_id: format!("c{i}"),
                    ifname: "eth0".into(),
                    netns: format!("/run/netns/{name}"),
                    network: "weir".into(),
                    pod_namespace: ns,
                    pod_name: name,
                    pod_uid: String::new(),
                    host_ifname: format!("weir{i}"),
                    host_ifindex: 100 + i as u32,
                    ips,
                    mac: String::new(),
                    gateways: GATEWAYS.iter().map(|g| g.parse().unwrap()).collect(),
                });
            }
        }
        for (i, p) in take(&self.policies, MAX_POLICIES).iter().enumerate() {
            let mut spec = Map::new();
            if let Some(s) = &p.pod_selector {
                spec.insert("podSelector".into(), s.json());
            }
            if let Some(t) = &p.policy_types {
                spec.insert(
                    "policyTypes".into(),
                    take(t, MAX_LIST).iter().map(|x| json!(pick(POLICY_TYPES, *x))).collect(),
                );
            }
            if let Some(r) = &p.ingress {
                spec.insert("ingress".into(), rules(r, "from"));
            }
            if let Some(r) = &p.egress {
                spec.insert("egress".into(), rules(r, "to"));
            }
            items.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"namespace": format!("ns{}", p.ns as usize % NAMESPACES), "name": format!("np{i}")},
                "spec": spec}));
        }
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        (list.to_string(), locals)
    }
}
