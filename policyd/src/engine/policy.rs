//! One NetworkPolicy turned into the engine's rule representation, with
//! everything that does not depend on pods (selectors, ports, ipBlocks)
//! validated once. Invalid parts are dropped here and reported; what is
//! left can only narrow access, never widen it.

use super::cidr::{parse_cidr, Block};
use super::ports::{port_blocks, protocol_number, valid_port_name, PortBlock};
use super::selector::Selector;
use super::{Action, Diagnostic, Direction, Labels, Tier};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Which namespaces a selector peer looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NsScope {
    /// podSelector alone: the policy's own namespace.
    Same(String),
    /// namespaceSelector (`{}` = every namespace).
    Matching(Selector),
}

/// A peer selecting pods by labels; the unit the peer-set cache is keyed on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerSelector {
    pub namespaces: NsScope,
    pub pods: Selector,
}

impl PeerSelector {
    /// Every pod of every namespace (`namespaceSelector: {}` with no or an
    /// empty podSelector): one wildcard entry, whatever the pods.
    pub fn is_every_pod(&self) -> bool {
        matches!(&self.namespaces, NsScope::Matching(n) if n.is_everything()) && self.pods.is_everything()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSpec {
    Pods(PeerSelector),
    Block(Block),
}

/// One allowed port entry before named ports are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// Any protocol, any port (no `ports` in the rule).
    Any,
    /// One protocol, any port (`port` absent).
    Proto(u8),
    /// One protocol, a number or a range as aligned blocks.
    Blocks(u8, Vec<PortBlock>),
    /// One protocol, a container port name resolved per destination pod.
    Named(u8, String),
    /// A container port name of the destination pod, with whatever
    /// protocol the container declares it (ClusterNetworkPolicy's
    /// `destinationNamedPort`).
    NamedAnyProtocol(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPeer {
    pub index: u32,
    pub rule_id: u32,
    pub spec: PeerSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// `from`/`to` absent or empty: every peer.
    All { rule_id: u32 },
    /// The valid peers of the list (maybe none, when all were invalid).
    List(Vec<CompiledPeer>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    pub direction: Direction,
    pub index: u32,
    /// Where the rule sits among tiers and what it does when it matches;
    /// NetworkPolicy rules are always (NetworkPolicy, Allow).
    pub tier: Tier,
    pub action: Action,
    /// Precedence within an Admin or Baseline tier
    /// ([`weir_bpf::abi::tier_rank`]: priority, rule index, action); 0 for
    /// NetworkPolicy, whose rules only ever allow.
    pub rank: u32,
    /// A ClusterNetworkPolicy rule's `name` (may be empty).
    pub name: String,
    pub peers: Peers,
    /// Valid port entries; empty after validation means the rule allows
    /// nothing (a list of only invalid ports never turns into "any port").
    pub ports: Vec<PortSpec>,
}

impl CompiledRule {
    pub fn uses_named_ports(&self) -> bool {
        self.ports.iter().any(PortSpec::is_named)
    }

    /// Whether its ports depend on which peer pod it is: named ports on
    /// egress are the peer's own.
    pub fn ports_per_peer(&self) -> bool {
        self.direction == Direction::Egress && self.uses_named_ports()
    }

    /// Whether its peer `sel` compiles to the every-pod wildcard entry
    /// ([`super::ID_ANY_POD`]) rather than to an entry per identity.
    pub fn peer_is_wildcard(&self, sel: &PeerSelector) -> bool {
        sel.is_every_pod() && !self.ports_per_peer()
    }
}

impl PortSpec {
    pub fn is_named(&self) -> bool {
        matches!(self, PortSpec::Named(..) | PortSpec::NamedAnyProtocol(_))
    }
}

/// Which pods the policy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Selector(Selector),
    /// spec.podSelector was invalid: every pod of the namespace is isolated
    /// in the policy's directions and the policy allows nothing.
    WholeNamespaceDenied,
    /// A ClusterNetworkPolicy's subject: pods of any namespace.
    Pods(PeerSelector),
    /// A ClusterNetworkPolicy that cannot be placed (bad tier, priority or
    /// subject): it selects nothing.
    Nothing,
}

impl Subject {
    /// Whether a pod of `namespace` (labelled `ns_labels`) with `labels`
    /// is selected. `namespace` is the policy's own for NetworkPolicy.
    pub fn selects(&self, namespace: &str, ns_labels: Option<&Labels>, labels: &Labels) -> bool {
        match self {
            Subject::Selector(s) => s.matches(labels),
            Subject::WholeNamespaceDenied => true,
            Subject::Pods(sel) => {
                let ns_ok = match &sel.namespaces {
                    NsScope::Same(ns) => ns == namespace,
                    NsScope::Matching(n) => ns_labels.is_some_and(|l| n.matches(l)),
                };
                ns_ok && sel.pods.matches(labels)
            }
            Subject::Nothing => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub namespace: String,
    pub name: String,
    pub subject: Subject,
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    /// Audit mode ([`MODE_ANNOTATION`]): compiled and reported, never
    /// enforced. Always false for a ClusterNetworkPolicy.
    pub audit: bool,
    pub rules: Vec<CompiledRule>,
    pub diagnostics: Vec<Diagnostic>,
    /// Bumped by the engine every time this policy is recompiled; part of
    /// every memo key that depends on it.
    pub version: u64,
}

/// Stable rule ids: the engine hands out numbers per
/// (namespace, name, direction, rule index, peer index).
pub trait RuleIds {
    fn rule_id(&mut self, ns: &str, name: &str, dir: Direction, rule: u32, peer: Option<u32>) -> u32;
}

/// A NetworkPolicy annotation: `audit` compiles the policy and reports the
/// flows it would drop (flow log, counters, explain) but isolates nothing;
/// `enforce`, or no annotation, enforces it.
pub const MODE_ANNOTATION: &str = "policy.weir.io/mode";

/// The policy's mode annotation, when it has one.
pub fn mode_annotation(np: &NetworkPolicy) -> Option<&str> {
    np.metadata.annotations.as_ref().and_then(|a| a.get(MODE_ANNOTATION)).map(String::as_str)
}

/// Whether a mode annotation's value asks for audit mode; an unknown value
/// is an error naming the accepted ones.
pub fn is_audit_mode(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("enforce") => Ok(false),
        Some("audit") => Ok(true),
        Some(other) => Err(format!("unknown mode {other:?}; use \"audit\" or \"enforce\"")),
    }
}

pub fn compile_policy(np: &NetworkPolicy, ids: &mut dyn RuleIds, version: u64) -> CompiledPolicy {
    let ns = np.metadata.namespace.clone().unwrap_or_default();
    let name = np.metadata.name.clone().unwrap_or_default();
    let object = format!("NetworkPolicy {ns}/{name}");
    let mut diags = Vec::new();
    let mut diag = |field: String, message: String| diags.push(Diagnostic { object: object.clone(), field, message });
    let spec = np.spec.clone().unwrap_or_default();
    // An unknown mode is enforced: a typo must not turn a policy off.
    let audit = is_audit_mode(mode_annotation(np)).unwrap_or_else(|e| {
        diag(format!("metadata.annotations[\"{MODE_ANNOTATION}\"]"), format!("{e} (the policy is enforced)"));
        false
    });

    let subject = match spec.pod_selector.as_ref().map(Selector::parse).unwrap_or(Ok(Selector::everything())) {
        Ok(s) => Subject::Selector(s),
        Err(e) => {
            diag(
                format!("spec.podSelector.{}", e.field),
                format!("{}; every pod of namespace {ns} is isolated by this policy and it allows nothing", e.message),
            );
            Subject::WholeNamespaceDenied
        }
    };

    // policyTypes defaulting as the API server does it: Ingress always,
    // Egress iff egress rules are present.
    let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let (mut ing, mut eg, mut ing_rules_ok, mut eg_rules_ok) = (true, has_egress_rules, true, true);
    if let Some(types) = spec.policy_types.as_ref().filter(|t| !t.is_empty()) {
        ing = false;
        eg = false;
        let mut bad = false;
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => ing = true,
                "Egress" => eg = true,
                other => {
                    bad = true;
                    diag(format!("spec.policyTypes[{i}]"), format!("unknown policy type {other:?}; use Ingress or Egress (the policy now isolates both directions)"));
                }
            }
        }
        // Unknown intent: isolate both, allow only through directions named validly.
        ing_rules_ok = ing;
        eg_rules_ok = eg;
        if bad {
            ing = true;
            eg = true;
        }
    }

    let mut rules = Vec::new();
    let subject_ok = matches!(subject, Subject::Selector(_));
    if ing && ing_rules_ok && subject_ok {
        for (ri, r) in spec.ingress.iter().flatten().enumerate() {
            let field = format!("spec.ingress[{ri}]");
            rules.push(compile_rule(
                &ns,
                &name,
                Direction::Ingress,
                ri as u32,
                r.from.as_deref(),
                "from",
                r.ports.as_deref(),
                &field,
                ids,
                &mut diag,
            ));
        }
    }
    if eg && eg_rules_ok && subject_ok {
        for (ri, r) in spec.egress.iter().flatten().enumerate() {
            let field = format!("spec.egress[{ri}]");
            rules.push(compile_rule(
                &ns,
                &name,
                Direction::Egress,
                ri as u32,
                r.to.as_deref(),
                "to",
                r.ports.as_deref(),
                &field,
                ids,
                &mut diag,
            ));
        }
    }

    CompiledPolicy {
        namespace: ns,
        name,
        subject,
        isolates_ingress: ing,
        isolates_egress: eg,
        audit,
        rules,
        diagnostics: diags,
        version,
    }
}

#[allow(clippy::too_many_arguments)]
fn compile_rule(
    ns: &str,
    name: &str,
    dir: Direction,
    ri: u32,
    peers: Option<&[NetworkPolicyPeer]>,
    peers_field: &str,
    ports: Option<&[NetworkPolicyPort]>,
    field: &str,
    ids: &mut dyn RuleIds,
    diag: &mut dyn FnMut(String, String),
) -> CompiledRule {
    let peers = match peers {
        None | Some([]) => Peers::All { rule_id: ids.rule_id(ns, name, dir, ri, None) },
        Some(list) => Peers::List(
            list.iter()
                .enumerate()
                .filter_map(|(pi, p)| {
                    let f = format!("{field}.{peers_field}[{pi}]");
                    compile_peer(ns, p, &f, diag).map(|spec| CompiledPeer {
                        index: pi as u32,
                        rule_id: ids.rule_id(ns, name, dir, ri, Some(pi as u32)),
                        spec,
                    })
                })
                .collect(),
        ),
    };
    let ports = match ports {
        None | Some([]) => vec![PortSpec::Any],
        Some(list) => {
            list.iter().enumerate().filter_map(|(i, p)| compile_port(p, &format!("{field}.ports[{i}]"), diag)).collect()
        }
    };
    CompiledRule {
        direction: dir,
        index: ri,
        tier: Tier::NetworkPolicy,
        action: Action::Allow,
        rank: 0,
        name: String::new(),
        peers,
        ports,
    }
}

fn compile_peer(
    ns: &str,
    p: &NetworkPolicyPeer,
    field: &str,
    diag: &mut dyn FnMut(String, String),
) -> Option<PeerSpec> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            diag(
                field.to_string(),
                "ipBlock cannot be combined with podSelector or namespaceSelector; split it into separate peers".into(),
            );
            return None;
        }
        let cidr = match parse_cidr(&b.cidr) {
            Ok(c) => c,
            Err(m) => {
                diag(format!("{field}.ipBlock.cidr"), m);
                return None;
            }
        };
        let mut except = Vec::new();
        for (i, e) in b.except.iter().flatten().enumerate() {
            let ef = format!("{field}.ipBlock.except[{i}]");
            match parse_cidr(e) {
                Ok(en) if cidr.contains(&en) && en != cidr => except.push(en),
                Ok(_) => {
                    diag(
                        ef,
                        format!("{e:?} is not strictly inside cidr {cidr}; the peer allows nothing until it is fixed"),
                    );
                    return None;
                }
                Err(m) => {
                    diag(ef, format!("{m}; the peer allows nothing until it is fixed"));
                    return None;
                }
            }
        }
        except.sort();
        except.dedup();
        return Some(PeerSpec::Block(Block { cidr, except }));
    }
    let pods = match &p.pod_selector {
        None => Selector::everything(),
        Some(s) => match Selector::parse(s) {
            Ok(s) => s,
            Err(e) => {
                diag(format!("{field}.podSelector.{}", e.field), e.message);
                return None;
            }
        },
    };
    let namespaces = match &p.namespace_selector {
        None if p.pod_selector.is_none() => {
            diag(field.to_string(), "a peer needs podSelector, namespaceSelector or ipBlock".into());
            return None;
        }
        None => NsScope::Same(ns.to_string()),
        Some(s) => match Selector::parse(s) {
            Ok(s) => NsScope::Matching(s),
            Err(e) => {
                diag(format!("{field}.namespaceSelector.{}", e.field), e.message);
                return None;
            }
        },
    };
    Some(PeerSpec::Pods(PeerSelector { namespaces, pods }))
}

fn compile_port(p: &NetworkPolicyPort, field: &str, diag: &mut dyn FnMut(String, String)) -> Option<PortSpec> {
    let Some(proto) = protocol_number(p.protocol.as_deref()) else {
        diag(
            format!("{field}.protocol"),
            format!("unknown protocol {:?}; use TCP, UDP or SCTP", p.protocol.as_deref().unwrap_or("")),
        );
        return None;
    };
    match (&p.port, p.end_port) {
        (None, None) => Some(PortSpec::Proto(proto)),
        (None, Some(_)) => {
            diag(format!("{field}.endPort"), "endPort needs a numeric port".into());
            None
        }
        (Some(IntOrString::Int(port)), end) => {
            if !(1..=65535).contains(port) {
                diag(format!("{field}.port"), format!("port {port} is outside 1-65535"));
                return None;
            }
            let last = match end {
                None => *port,
                Some(e) if (*port..=65535).contains(&e) => e,
                Some(e) => {
                    diag(format!("{field}.endPort"), format!("endPort {e} must be between port {port} and 65535"));
                    return None;
                }
            };
            Some(PortSpec::Blocks(proto, port_blocks(*port as u16, last as u16)))
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                diag(format!("{field}.endPort"), "endPort cannot be used with a named port".into());
                return None;
            }
            if !valid_port_name(name) {
                diag(
                    format!("{field}.port"),
                    format!("{name:?} is not a valid port name (1-15 of a-z, 0-9, '-', with a letter) nor a number"),
                );
                return None;
            }
            Some(PortSpec::Named(proto, name.clone()))
        }
    }
}
