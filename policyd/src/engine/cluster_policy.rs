//! One ClusterNetworkPolicy turned into the engine's rule representation
//! (the same [`CompiledPolicy`] NetworkPolicy compiles to, with a cluster
//! [`Subject`], a tier, actions and ranks), validated once.
//!
//! Bad input is reported with its field path and never widens access:
//! - a policy that cannot be placed (unknown tier, priority outside
//!   0-1000, a subject that is empty, has both fields or an invalid
//!   selector) selects nothing: its pods keep what their other policies say;
//! - inside a rule, upstream's "fail closed": an invalid or unsupported
//!   peer or protocol (experimental `nodes`/`domainNames`, a `networks`
//!   entry that is not a CIDR, a port out of range) makes an Accept rule
//!   match nothing through it, and turns a Deny or Pass rule into "Deny
//!   everything"; an unknown action is such a Deny.

use super::cidr::{parse_cidr, Block};
use super::policy::{
    CompiledPeer, CompiledPolicy, CompiledRule, NsScope, PeerSelector, PeerSpec, Peers, PortSpec, RuleIds, Subject,
};
use super::ports::{port_blocks, valid_port_name, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use super::selector::Selector;
use super::{Action, Diagnostic, Direction, Tier};
use crate::cluster_network_policy::{
    ClusterNetworkPolicy, ClusterNetworkPolicyProtocol, NamespacedPod, Port, ProtocolPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use weir_bpf::abi::{tier_rank, TIER_ACCEPT, TIER_DENY, TIER_PASS};

/// Rules per direction the API allows; the rank has room for 32.
const MAX_RULES: usize = 25;
const MAX_PRIORITY: i32 = 1000;

/// The namespace rule ids and explanations use for cluster-scoped policies.
pub const CLUSTER_SCOPE: &str = "";

pub fn compile_cluster_policy(cnp: &ClusterNetworkPolicy, ids: &mut dyn RuleIds, version: u64) -> CompiledPolicy {
    let name = cnp.metadata.name.clone().unwrap_or_default();
    let object = format!("ClusterNetworkPolicy {name}");
    let mut diags = Vec::new();
    let mut diag = |field: &str, message: String| {
        diags.push(Diagnostic { object: object.clone(), field: field.to_string(), message })
    };
    let spec = &cnp.spec;
    let ignored = "; the policy selects nothing until it is fixed";

    let tier = match spec.tier.as_str() {
        "Admin" => Some(Tier::Admin),
        "Baseline" => Some(Tier::Baseline),
        other => {
            diag("spec.tier", format!("unknown tier {other:?}; use Admin or Baseline{ignored}"));
            None
        }
    };
    let priority = if (0..=MAX_PRIORITY).contains(&spec.priority) {
        Some(spec.priority as u32)
    } else {
        diag("spec.priority", format!("priority {} is outside 0-{MAX_PRIORITY}{ignored}", spec.priority));
        None
    };
    let subject = match (&spec.subject.namespaces, &spec.subject.pods) {
        (Some(ns), None) => pods_of("spec.subject.namespaces", Some(ns), None, &mut diag),
        (None, Some(p)) => pods_of_namespaced("spec.subject.pods", p, &mut diag),
        (None, None) => {
            diag("spec.subject", format!("the subject is empty; set namespaces or pods{ignored}"));
            None
        }
        (Some(_), Some(_)) => {
            diag("spec.subject", format!("set exactly one of namespaces and pods{ignored}"));
            None
        }
    };
    let (Some(tier), Some(priority), Some(subject)) = (tier, priority, subject) else {
        return CompiledPolicy {
            namespace: CLUSTER_SCOPE.to_string(),
            name,
            subject: Subject::Nothing,
            isolates_ingress: false,
            isolates_egress: false,
            audit: false,
            rules: Vec::new(),
            diagnostics: diags,
            version,
        };
    };

    let mut rules = Vec::new();
    for (dir, list) in [
        (Direction::Ingress, spec.ingress.iter().map(RuleView::ingress).collect::<Vec<_>>()),
        (Direction::Egress, spec.egress.iter().map(RuleView::egress).collect::<Vec<_>>()),
    ] {
        let dir_field = if dir == Direction::Ingress { "spec.ingress" } else { "spec.egress" };
        if list.len() > MAX_RULES {
            diag(
                dir_field,
                format!(
                    "{} rules; the API allows {MAX_RULES}, and rules past the 32nd share one precedence",
                    list.len()
                ),
            );
        }
        for (ri, r) in list.iter().enumerate() {
            let field = format!("{dir_field}[{ri}]");
            let ctx = RuleCtx { name: &name, dir, index: ri as u32, tier, priority, field: &field };
            rules.push(compile_rule(&ctx, r, ids, &mut diag));
        }
    }
    CompiledPolicy {
        namespace: CLUSTER_SCOPE.to_string(),
        name,
        subject: Subject::Pods(subject),
        isolates_ingress: false,
        isolates_egress: false,
        audit: false,
        rules,
        diagnostics: diags,
        version,
    }
}

/// An ingress or egress rule, seen alike.
struct RuleView<'a> {
    name: &'a str,
    action: &'a str,
    peers_field: &'static str,
    peers: Vec<PeerView<'a>>,
    protocols: Option<&'a [ClusterNetworkPolicyProtocol]>,
}

/// One peer: the kinds it names (exactly one is valid).
#[derive(Default)]
struct PeerView<'a> {
    namespaces: Option<&'a LabelSelector>,
    pods: Option<&'a NamespacedPod>,
    networks: Option<&'a [String]>,
    experimental: Vec<&'static str>,
}

impl<'a> RuleView<'a> {
    fn ingress(r: &'a crate::cluster_network_policy::ClusterNetworkPolicyIngressRule) -> Self {
        RuleView {
            name: &r.name,
            action: &r.action,
            peers_field: "from",
            peers: r
                .from
                .iter()
                .map(|p| PeerView { namespaces: p.namespaces.as_ref(), pods: p.pods.as_ref(), ..Default::default() })
                .collect(),
            protocols: r.protocols.as_deref(),
        }
    }

    fn egress(r: &'a crate::cluster_network_policy::ClusterNetworkPolicyEgressRule) -> Self {
        RuleView {
            name: &r.name,
            action: &r.action,
            peers_field: "to",
            peers: r
                .to
                .iter()
                .map(|p| {
                    let mut experimental = Vec::new();
                    if p.nodes.is_some() {
                        experimental.push("nodes");
                    }
                    if p.domain_names.is_some() {
                        experimental.push("domainNames");
                    }
                    PeerView {
                        namespaces: p.namespaces.as_ref(),
                        pods: p.pods.as_ref(),
                        networks: p.networks.as_deref(),
                        experimental,
                    }
                })
                .collect(),
            protocols: r.protocols.as_deref(),
        }
    }
}

struct RuleCtx<'a> {
    name: &'a str,
    dir: Direction,
    index: u32,
    tier: Tier,
    priority: u32,
    field: &'a str,
}

fn compile_rule(
    ctx: &RuleCtx,
    r: &RuleView,
    ids: &mut dyn RuleIds,
    diag: &mut dyn FnMut(&str, String),
) -> CompiledRule {
    let field = ctx.field;
    let (mut action, mut fail_closed) = match r.action {
        "Accept" => (Action::Allow, false),
        "Deny" => (Action::Deny, false),
        "Pass" => (Action::Pass, false),
        other => {
            diag(
                &format!("{field}.action"),
                format!(
                    "unknown action {other:?}; use Accept, Deny or Pass (the rule denies everything until it is fixed)"
                ),
            );
            (Action::Deny, true)
        }
    };
    if r.name.chars().count() > 100 {
        diag(&format!("{field}.name"), "longer than 100 characters".into());
    }
    // Invalid parts, (field, message): reported below with what they do
    // to the rule.
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut problem = |f: &str, m: String| problems.push((f.to_string(), m));

    let mut peers = Vec::new();
    if r.peers.is_empty() {
        problem(&format!("{field}.{}", r.peers_field), "no peers; give at least one".into());
    }
    let mut towards_networks = false;
    for (pi, p) in r.peers.iter().enumerate() {
        let pf = format!("{field}.{}[{pi}]", r.peers_field);
        if !p.experimental.is_empty() {
            let which = p.experimental.join(" and ");
            problem(&pf, format!("{which} is an experimental-channel field this version does not support"));
            continue;
        }
        if p.namespaces.is_some() as u8 + p.pods.is_some() as u8 + p.networks.is_some() as u8 != 1 {
            problem(&pf, "a peer needs exactly one of namespaces, pods and networks".into());
            continue;
        }
        let rule_id = ids.rule_id(CLUSTER_SCOPE, ctx.name, ctx.dir, ctx.index, Some(pi as u32));
        let mut push = |spec| peers.push(CompiledPeer { index: pi as u32, rule_id, spec });
        if let Some(ns) = p.namespaces {
            if let Some(sel) = pods_of(&format!("{pf}.namespaces"), Some(ns), None, &mut problem) {
                push(PeerSpec::Pods(sel));
            }
        } else if let Some(np) = p.pods {
            if let Some(sel) = pods_of_namespaced(&format!("{pf}.pods"), np, &mut problem) {
                push(PeerSpec::Pods(sel));
            }
        } else if let Some(nets) = p.networks {
            towards_networks = true;
            if nets.is_empty() {
                problem(&format!("{pf}.networks"), "an empty list; give at least one CIDR".into());
            }
            for (ni, n) in nets.iter().enumerate() {
                match parse_cidr(n) {
                    Ok(cidr) => push(PeerSpec::Block(Block { cidr, except: Vec::new() })),
                    Err(m) => problem(&format!("{pf}.networks[{ni}]"), m),
                }
            }
        }
    }

    let mut ports = Vec::new();
    match r.protocols {
        None => ports.push(PortSpec::Any),
        Some([]) => {
            problem(&format!("{field}.protocols"), "an empty list; leave it out to match every protocol".into())
        }
        Some(list) => {
            for (i, p) in list.iter().enumerate() {
                let pf = format!("{field}.protocols[{i}]");
                match compile_protocol(p, &pf) {
                    Ok(spec) => {
                        if towards_networks && matches!(spec, PortSpec::NamedAnyProtocol(_)) {
                            // Upstream forbids it; a CIDR has no named ports.
                            diag(&format!("{pf}.destinationNamedPort"), "a named port matches nothing towards networks peers (they are not pods); use a port number".into());
                        }
                        ports.push(spec)
                    }
                    Err((f, m)) => problem(&f, m),
                }
            }
        }
    }
    // Upstream's fail-closed: a bad part matches nothing in an Accept rule,
    // and turns a Deny or Pass rule into "Deny everything".
    let consequence = if action == Action::Allow {
        "this part matches nothing"
    } else {
        "the rule denies everything until it is fixed"
    };
    for (f, m) in &problems {
        diag(f, format!("{m}; {consequence}"));
    }
    fail_closed |= action != Action::Allow && !problems.is_empty();

    if fail_closed {
        action = Action::Deny;
        peers.clear();
    }
    let code = match action {
        Action::Allow => TIER_ACCEPT,
        Action::Deny => TIER_DENY,
        Action::Pass => TIER_PASS,
    };
    let rank = tier_rank(ctx.priority, ctx.index.min(31), code);
    let (peers, ports) = if fail_closed {
        (Peers::All { rule_id: ids.rule_id(CLUSTER_SCOPE, ctx.name, ctx.dir, ctx.index, None) }, vec![PortSpec::Any])
    } else {
        (Peers::List(peers), ports)
    };
    CompiledRule {
        direction: ctx.dir,
        index: ctx.index,
        tier: ctx.tier,
        action,
        rank,
        name: r.name.to_string(),
        peers,
        ports,
    }
}

fn compile_protocol(p: &ClusterNetworkPolicyProtocol, field: &str) -> Result<PortSpec, (String, String)> {
    let named = !p.destination_named_port.is_empty();
    let given = [p.tcp.is_some(), p.udp.is_some(), p.sctp.is_some(), named].iter().filter(|x| **x).count();
    if given != 1 {
        return Err((field.to_string(), "set exactly one of tcp, udp, sctp and destinationNamedPort".into()));
    }
    if named {
        let n = &p.destination_named_port;
        if !valid_port_name(n) {
            return Err((
                format!("{field}.destinationNamedPort"),
                format!("{n:?} is not a valid port name (1-15 of a-z, 0-9, '-', with a letter)"),
            ));
        }
        return Ok(PortSpec::NamedAnyProtocol(n.clone()));
    }
    let (proto, name, pp): (u8, &str, &ProtocolPort) = if let Some(t) = &p.tcp {
        (PROTO_TCP, "tcp", t)
    } else if let Some(u) = &p.udp {
        (PROTO_UDP, "udp", u)
    } else {
        (PROTO_SCTP, "sctp", p.sctp.as_ref().expect("one of the four is set"))
    };
    let pf = format!("{field}.{name}.destinationPort");
    match &pp.destination_port {
        None => Ok(PortSpec::Proto(proto)),
        Some(Port { number: Some(n), range: None }) => {
            if !(1..=65535).contains(n) {
                return Err((format!("{pf}.number"), format!("port {n} is outside 1-65535")));
            }
            Ok(PortSpec::Blocks(proto, port_blocks(*n as u16, *n as u16)))
        }
        Some(Port { number: None, range: Some(r) }) => {
            if !(1..=65535).contains(&r.start) || !(1..=65535).contains(&r.end) || r.start >= r.end {
                return Err((
                    format!("{pf}.range"),
                    format!("range {}-{} needs 1 <= start < end <= 65535", r.start, r.end),
                ));
            }
            Ok(PortSpec::Blocks(proto, port_blocks(r.start as u16, r.end as u16)))
        }
        Some(_) => Err((pf, "set exactly one of number and range".into())),
    }
}

/// Pods of the namespaces `ns` selects that `pods` selects (absent: all).
fn pods_of(
    field: &str,
    ns: Option<&LabelSelector>,
    pods: Option<(&str, &LabelSelector)>,
    diag: &mut dyn FnMut(&str, String),
) -> Option<PeerSelector> {
    let ns_sel = match ns.map(Selector::parse).unwrap_or(Ok(Selector::everything())) {
        Ok(s) => s,
        Err(e) => {
            diag(&format!("{field}.{}", e.field), e.message);
            return None;
        }
    };
    let pod_sel = match pods {
        None => Selector::everything(),
        Some((pf, sel)) => match Selector::parse(sel) {
            Ok(s) => s,
            Err(e) => {
                diag(&format!("{pf}.{}", e.field), e.message);
                return None;
            }
        },
    };
    Some(PeerSelector { namespaces: NsScope::Matching(ns_sel), pods: pod_sel })
}

fn pods_of_namespaced(field: &str, p: &NamespacedPod, diag: &mut dyn FnMut(&str, String)) -> Option<PeerSelector> {
    pods_of(
        &format!("{field}.namespaceSelector"),
        Some(&p.namespace_selector),
        Some((&format!("{field}.podSelector"), &p.pod_selector)),
        diag,
    )
}
