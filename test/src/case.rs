//! The case schema: one YAML file per case under test/conformance/cases/.
//!
//! ```yaml
//! name: default-deny-ingress            # = the file name without .yaml
//! origin: upstream                      # upstream | legacy | weir
//! reference: "..."                      # upstream test title, paraphrased
//! protocols: [TCP]                      # every protocol the probes use
//! ports: [80]                           # every port the probes use
//! sctp: verdict-only                    # required iff a probe uses SCTP
//! setup: []                             # objects beyond the model, applied first
//! steps:
//!   - apply: [ {kind: NetworkPolicy, ...} ]
//!   - delete: [ {kind: NetworkPolicy, namespace: x, name: deny-all} ]
//!   - probe: {port: 80, protocol: TCP, expect: {deny: [{to: "x/*"}]}}
//! ```
//!
//! Objects are NetworkPolicy, ClusterNetworkPolicy, Namespace, Pod or
//! Service, completed by `model::complete`, with pod-address placeholders
//! (see `placeholder`; any string, so ipBlock cidrs and ClusterNetworkPolicy
//! `networks` alike). Namespace and ClusterNetworkPolicy are cluster-scoped:
//! no `namespace`, in objects and deletes.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::expect::{Expectation, PodRef};
use crate::model;
use crate::placeholder;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum Protocol {
    TCP,
    UDP,
    SCTP,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
            Protocol::SCTP => "SCTP",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A case of upstream's current network_policy.go.
    Upstream,
    /// An idea from upstream's older network_legacy.go not covered above.
    Legacy,
    /// Weir's own: what upstream does not probe.
    Weir,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Upstream => "upstream",
            Origin::Legacy => "legacy",
            Origin::Weir => "weir",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SctpMode {
    /// The kernel here has no SCTP sockets: the lab cannot complete an SCTP
    /// exchange, so such probes are reported unsupported, never passed.
    #[serde(rename = "verdict-only")]
    VerdictOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Dial the destination's Service ClusterIP (upstream's way: kube-proxy
    /// DNAT sits in the path).
    #[default]
    Service,
    /// Dial the destination pod's address directly.
    Pod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Family {
    #[default]
    IPv4,
    IPv6,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub via: Via,
    /// Which address family to dial (pod addresses or ClusterIPs).
    #[serde(default)]
    pub family: Family,
    pub expect: Expectation,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRef {
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawStep")]
pub enum Step {
    Apply(Vec<Value>),
    Delete(Vec<DeleteRef>),
    Probe(Probe),
}

/// A step as written: a map with exactly one of its keys (serde_yaml_ng
/// would otherwise want YAML tags for an enum).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    apply: Option<Vec<Value>>,
    delete: Option<Vec<DeleteRef>>,
    probe: Option<Probe>,
}

impl TryFrom<RawStep> for Step {
    type Error = String;

    fn try_from(r: RawStep) -> Result<Step, String> {
        match (r.apply, r.delete, r.probe) {
            (Some(a), None, None) => Ok(Step::Apply(a)),
            (None, Some(d), None) => Ok(Step::Delete(d)),
            (None, None, Some(p)) => Ok(Step::Probe(p)),
            _ => Err("a step has exactly one of the keys apply, delete, probe".into()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub origin: Origin,
    pub reference: String,
    pub protocols: Vec<Protocol>,
    pub ports: Vec<u16>,
    #[serde(default)]
    pub sctp: Option<SctpMode>,
    #[serde(default)]
    pub setup: Vec<Value>,
    pub steps: Vec<Step>,
    #[serde(skip)]
    pub file: PathBuf,
}

impl Case {
    pub fn parse(text: &str, file: &Path) -> Result<Case> {
        let mut c: Case =
            serde_yaml_ng::from_str(text).with_context(|| format!("{}: not a valid case", file.display()))?;
        c.file = file.to_path_buf();
        c.check().with_context(|| format!("{}: case {:?}", file.display(), c.name))?;
        Ok(c)
    }

    pub fn load(file: &Path) -> Result<Case> {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        Case::parse(&text, file)
    }

    pub fn probes(&self) -> impl Iterator<Item = &Probe> {
        self.steps.iter().filter_map(|s| match s {
            Step::Probe(p) => Some(p),
            _ => None,
        })
    }

    pub fn uses_sctp(&self) -> bool {
        self.probes().any(|p| p.protocol == Protocol::SCTP)
    }

    /// Whether a verdict of the case depends on the path a packet takes
    /// between nodes, beyond reaching the pod: it judges egress (after a
    /// Service's DNAT that happens where the backend's device is, see
    /// `leave_node`) or matches addresses (`ipBlock`, `networks`: the
    /// source address that arrives). Ingress by selectors is judged by
    /// `to_pod` on the same packet whatever carried it.
    pub fn depends_on_the_path_between_nodes(&self) -> bool {
        fn mentions(v: &Value) -> bool {
            match v {
                Value::Mapping(m) => {
                    m.iter().any(|(k, v)| matches!(k.as_str(), Some("egress" | "ipBlock" | "networks")) || mentions(v))
                }
                Value::Sequence(s) => s.iter().any(mentions),
                Value::String(s) => s == "Egress",
                _ => false,
            }
        }
        let applied = self.steps.iter().flat_map(|s| match s {
            Step::Apply(objs) => objs.as_slice(),
            _ => &[],
        });
        self.setup.iter().chain(applied).any(mentions)
    }

    /// Everything that can be known without a lab: fields agree with the
    /// probes, objects are valid and complete, placeholders parse, deletes
    /// name something that exists, and every expectation evaluates over the
    /// pods that exist at that step.
    pub fn check(&self) -> Result<()> {
        ensure!(
            !self.name.is_empty()
                && self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "name {:?}: use lower-case letters, digits and '-'",
            self.name
        );
        if let Some(stem) = self.file.file_stem().and_then(|s| s.to_str()) {
            ensure!(stem == self.name, "name {:?} differs from the file name {stem:?}", self.name);
        }
        ensure!(!self.reference.trim().is_empty(), "reference: say what upstream test (or idea) this case covers");
        ensure!(self.probes().next().is_some(), "steps: a case needs at least one probe");
        for p in self.probes() {
            ensure!(self.protocols.contains(&p.protocol), "a probe uses {} but `protocols` lacks it", p.protocol);
            ensure!(self.ports.contains(&p.port), "a probe uses port {} but `ports` lacks it", p.port);
        }
        for proto in &self.protocols {
            ensure!(self.probes().any(|p| p.protocol == *proto), "protocols lists {proto} but no probe uses it");
        }
        for port in &self.ports {
            ensure!(self.probes().any(|p| p.port == *port), "ports lists {port} but no probe uses it");
        }
        match (self.uses_sctp(), self.sctp) {
            (true, None) => bail!("a probe uses SCTP: add `sctp: verdict-only` (no SCTP sockets on this kernel)"),
            (false, Some(_)) => bail!("`sctp: verdict-only` but no probe uses SCTP"),
            _ => {}
        }

        let mut world = World::model();
        for (i, obj) in self.setup.iter().enumerate() {
            world.apply(obj).with_context(|| format!("setup[{i}]"))?;
        }
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Apply(objs) => {
                    ensure!(!objs.is_empty(), "steps[{i}].apply: empty list");
                    for (j, obj) in objs.iter().enumerate() {
                        world.apply(obj).with_context(|| format!("steps[{i}].apply[{j}]"))?;
                    }
                }
                Step::Delete(refs) => {
                    ensure!(!refs.is_empty(), "steps[{i}].delete: empty list");
                    for (j, r) in refs.iter().enumerate() {
                        world.delete(r).with_context(|| format!("steps[{i}].delete[{j}]"))?;
                    }
                }
                Step::Probe(p) => {
                    p.expect
                        .evaluate(&world.pods())
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("steps[{i}].probe.expect"))?;
                }
            }
        }
        Ok(())
    }
}

/// What exists in the lab as far as a case is concerned: which objects
/// and, for the matrix, which pods. Tracked while stepping through a case,
/// both for checking it and for running it.
#[derive(Debug, Clone)]
pub struct World {
    objects: BTreeSet<(String, Option<String>, String)>,
}

impl World {
    pub fn model() -> World {
        let mut w = World { objects: BTreeSet::new() };
        for (_, obj) in model::model_objects() {
            w.apply(&obj).expect("the model is valid");
        }
        w
    }

    pub fn apply(&mut self, obj: &Value) -> Result<()> {
        let done = model::complete(obj.clone())?;
        placeholder::placeholders(&done)?;
        let id = model::object_id(&done)?;
        if let Some(ns) = &id.namespace {
            ensure!(
                self.objects.contains(&("Namespace".to_string(), None, ns.clone())),
                "{} {}/{}: namespace {ns:?} does not exist (apply the Namespace first)",
                id.kind,
                ns,
                id.name
            );
        }
        self.objects.insert((id.kind, id.namespace, id.name));
        Ok(())
    }

    pub fn delete(&mut self, r: &DeleteRef) -> Result<()> {
        ensure!(model::KINDS.contains(&r.kind.as_str()), "delete: kind {:?} is not one a case may use", r.kind);
        ensure!(
            model::is_cluster_scoped(&r.kind) == r.namespace.is_none(),
            "delete {} {}: namespace is required for namespaced kinds and absent for Namespace and ClusterNetworkPolicy",
            r.kind,
            r.name
        );
        let key = (r.kind.clone(), r.namespace.clone(), r.name.clone());
        ensure!(
            self.objects.remove(&key),
            "delete {} {:?}/{}: no such object at this step",
            r.kind,
            r.namespace,
            r.name
        );
        if r.kind == "Namespace" {
            self.objects.retain(|(_, ns, _)| ns.as_deref() != Some(r.name.as_str()));
        }
        Ok(())
    }

    pub fn pods(&self) -> Vec<PodRef> {
        self.objects
            .iter()
            .filter(|(k, _, _)| k == "Pod")
            .map(|(_, ns, n)| PodRef::new(ns.as_deref().unwrap_or_default(), n))
            .collect()
    }
}

/// Every case under `dir` (one `*.yaml` file each), sorted by file name,
/// with names unique.
pub fn load_dir(dir: &Path) -> Result<Vec<Case>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading case directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    let mut cases = Vec::new();
    let mut names = BTreeSet::new();
    for f in files {
        let c = Case::load(&f)?;
        ensure!(names.insert(c.name.clone()), "{}: case name {:?} used twice", f.display(), c.name);
        cases.push(c);
    }
    Ok(cases)
}

/// test/conformance/cases, or `$WEIR_CONFORMANCE_DIR` (to run cases kept
/// elsewhere).
pub fn cases_dir() -> PathBuf {
    match std::env::var_os("WEIR_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/cases"),
    }
}

pub fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/model")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: sample
origin: weir
reference: "a sample"
protocols: [TCP, SCTP]
ports: [80, 81]
sctp: verdict-only
setup:
  - {kind: Pod, metadata: {name: d, namespace: x, labels: {pod: d}}}
steps:
  - apply:
      - kind: NetworkPolicy
        metadata: {name: deny, namespace: x}
        spec: {podSelector: {}, policyTypes: [Ingress], ingress: [{from: [{ipBlock: {cidr: "{{hostcidr y/b}}"}}]}]}
  - probe: {port: 80, protocol: TCP, expect: {deny: [{to: "x/*"}], allow: [{from: y/b, to: "x/*"}]}}
  - delete: [{kind: Pod, namespace: x, name: d}]
  - probe: {port: 81, protocol: SCTP, via: pod, family: IPv6, expect: {default: allow}}
"#;

    fn parse(text: &str) -> Result<Case> {
        Case::parse(text, Path::new("sample.yaml"))
    }

    #[test]
    fn egress_and_address_matches_make_a_case_depend_on_the_path_between_nodes() {
        let ingress_by_selector = GOOD.replace(r#"{ipBlock: {cidr: "{{hostcidr y/b}}"}}"#, "{podSelector: {}}");
        assert!(!parse(&ingress_by_selector).unwrap().depends_on_the_path_between_nodes());
        assert!(parse(GOOD).unwrap().depends_on_the_path_between_nodes(), "an ipBlock");
        let deny_all_egress = ingress_by_selector.replace("policyTypes: [Ingress]", "policyTypes: [Ingress, Egress]");
        assert!(parse(&deny_all_egress).unwrap().depends_on_the_path_between_nodes(), "policyTypes Egress");
        let egress_rule = ingress_by_selector.replace("ingress: [{from:", "egress: [{to:");
        assert!(parse(&egress_rule).unwrap().depends_on_the_path_between_nodes(), "an egress rule");
    }

    #[test]
    fn a_full_case_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.steps.len(), 4);
        assert_eq!(c.probes().count(), 2);
        assert!(c.uses_sctp());
        let Step::Probe(p) = &c.steps[3] else { panic!() };
        assert_eq!((p.via, p.family), (Via::Pod, Family::IPv6));
        let Step::Probe(p) = &c.steps[1] else { panic!() };
        assert_eq!((p.via, p.family), (Via::Service, Family::IPv4));
    }

    #[test]
    fn the_pod_set_follows_the_steps() {
        // x/d exists in setup, so the first expectation may name it; after
        // its deletion, naming it is an error.
        let bad = GOOD.replace("expect: {default: allow}", "expect: {deny: [{to: x/d}]}");
        let e = format!("{:#}", parse(&bad).unwrap_err());
        assert!(e.contains("steps[3]") && e.contains("x/d"), "{e}");
        let ok = GOOD.replace("allow: [{from: y/b", "allow: [{from: x/d");
        parse(&ok).unwrap();
    }

    const CNP: &str = r#"
name: sample
origin: weir
reference: "a sample"
protocols: [TCP]
ports: [80]
steps:
  - apply:
      - kind: ClusterNetworkPolicy
        metadata: {name: deny}
        spec:
          tier: Admin
          priority: 5
          subject: {namespaces: {}}
          egress: [{action: Deny, to: [{networks: ["{{hostcidr y/b}}"]}]}]
  - probe: {port: 80, protocol: TCP, expect: {deny: [{to: y/b}]}}
  - delete: [{kind: ClusterNetworkPolicy, name: deny}]
  - probe: {port: 80, protocol: TCP, expect: {default: allow}}
"#;

    #[test]
    fn cluster_network_policies_are_cluster_scoped_and_take_placeholders() {
        let c = parse(CNP).unwrap();
        let Step::Apply(objs) = &c.steps[0] else { panic!() };
        let done = model::complete(objs[0].clone()).unwrap();
        assert_eq!(placeholder::placeholders(&done).unwrap().len(), 1, "the networks entry is resolved per step");
        for (bad, needle) in [
            (CNP.replace("{name: deny}", "{name: deny, namespace: x}"), "cluster-scoped"),
            (
                CNP.replace(
                    "{kind: ClusterNetworkPolicy, name: deny}",
                    "{kind: ClusterNetworkPolicy, namespace: x, name: deny}",
                ),
                "absent for Namespace and ClusterNetworkPolicy",
            ),
            (CNP.replace("{{hostcidr y/b}}", "{{hostcidr yb}}"), "NAMESPACE/POD"),
        ] {
            let e = format!("{:#}", parse(&bad).unwrap_err());
            assert!(e.contains(needle), "want {needle:?} in: {e}");
        }
    }

    #[test]
    fn inconsistent_cases_are_rejected() {
        let cases = [
            (GOOD.replace("sctp: verdict-only\n", ""), "verdict-only"),
            (GOOD.replace("protocols: [TCP, SCTP]", "protocols: [TCP, SCTP, UDP]"), "UDP"),
            (GOOD.replace("ports: [80, 81]", "ports: [80]"), "port 81"),
            (GOOD.replace("name: sample", "name: other"), "file name"),
            (GOOD.replace("name: d, namespace: x, labels", "name: d, namespace: q, labels"), "namespace \"q\""),
            (
                GOOD.replace(
                    "delete: [{kind: Pod, namespace: x, name: d}]",
                    "delete: [{kind: Pod, namespace: x, name: e}]",
                ),
                "no such object",
            ),
            (GOOD.replace("{{hostcidr y/b}}", "{{hostcidr yb}}"), "NAMESPACE/POD"),
            (GOOD.replace("origin: weir", "origin: elsewhere"), "origin"),
            (GOOD.replace("via: pod", "via: node"), "via"),
            (GOOD.replace("family: IPv6", "family: IPv5"), "IPv5"),
            (GOOD.replace("protocol: TCP,", "protocol: ICMP,"), "ICMP"),
            (GOOD.replace("- apply:", "- patch:"), "patch"),
        ];
        for (text, needle) in cases {
            let e = format!("{:#}", parse(&text).unwrap_err());
            assert!(e.contains(needle), "want {needle:?} in: {e}");
        }
    }

    /// Every shipped case parses, agrees with itself and its expectations
    /// evaluate over the pods of their step.
    #[test]
    fn every_case_file_parses_and_evaluates() {
        let cases = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/cases")).unwrap();
        assert!(cases.len() >= 48, "only {} cases", cases.len());
        // ClusterNetworkPolicy cases are named cnp-*, the rest are NetworkPolicy's.
        let (cnp, np): (Vec<&Case>, Vec<&Case>) = cases.iter().partition(|c| c.name.starts_with("cnp-"));
        let count = |cs: &[&Case], o: Origin| cs.iter().filter(|c| c.origin == o).count();
        assert_eq!(count(&np, Origin::Upstream), 48, "network_policy.go has 48 cases");
        assert_eq!(
            count(&cnp, Origin::Upstream),
            18,
            "network-policy-api's standard conformance has 18 ClusterNetworkPolicy tests"
        );
        let uses_cnp = |c: &Case| {
            c.steps
                .iter()
                .any(|s| matches!(s, Step::Apply(objs) if objs.iter().any(|o| o["kind"] == "ClusterNetworkPolicy")))
        };
        for c in &cnp {
            assert!(uses_cnp(c), "{}: a cnp- case applies a ClusterNetworkPolicy", c.name);
        }
        let sctp_only = |cs: &[&Case]| cs.iter().filter(|c| c.probes().all(|p| p.protocol == Protocol::SCTP)).count();
        assert_eq!(sctp_only(&np), 3);
        assert_eq!(sctp_only(&cnp), 4, "admin and baseline, ingress and egress");
    }

    /// Every key of `input` survives the round trip through the typed
    /// object: the API types ignore unknown fields, so a misspelt one in a
    /// case would silently vanish and the case would test something else.
    fn assert_no_unknown_fields(path: &str, input: &serde_json::Value, typed: &serde_json::Value) {
        use serde_json::Value as J;
        match (input, typed) {
            (J::Object(i), J::Object(t)) => {
                for (k, v) in i {
                    let tv = t.get(k).unwrap_or_else(|| panic!("{path}.{k}: not a field of this kind (typo?)"));
                    assert_no_unknown_fields(&format!("{path}.{k}"), v, tv);
                }
            }
            (J::Array(i), J::Array(t)) => {
                assert_eq!(i.len(), t.len(), "{path}");
                for (n, (a, b)) in i.iter().zip(t).enumerate() {
                    assert_no_unknown_fields(&format!("{path}[{n}]"), a, b);
                }
            }
            _ => {}
        }
    }

    /// Every ClusterNetworkPolicy a case applies is read by policyd's own
    /// parser as written (placeholders resolved to sample addresses).
    #[test]
    fn every_cluster_network_policy_in_the_cases_decodes_whole() {
        let cases = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/cases")).unwrap();
        let mut ips = placeholder::PodIps::new();
        for (i, ns) in ["x", "y", "z"].iter().enumerate() {
            for (j, pod) in ["a", "b", "c", "d"].iter().enumerate() {
                let ip = format!("10.88.{i}.{}", j + 2).parse().unwrap();
                ips.insert(PodRef::new(ns, pod), vec![ip]);
            }
        }
        let mut seen = 0;
        for c in &cases {
            for (i, step) in c.steps.iter().enumerate() {
                let Step::Apply(objs) = step else { continue };
                for obj in objs.iter().filter(|o| o["kind"] == "ClusterNetworkPolicy") {
                    let what = format!("{} steps[{i}]", c.name);
                    let done = placeholder::resolve(&model::complete(obj.clone()).unwrap(), &ips).unwrap();
                    let text = serde_yaml_ng::to_string(&done).unwrap();
                    let parsed =
                        weir_policyd::source::manifest::parse(&what, &text).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(parsed.objects.len(), 1, "{what}: {:?}", parsed.skipped);
                    let typed = parsed.objects[0].to_json();
                    let input: serde_json::Value = serde_json::to_value(&done).unwrap();
                    assert_no_unknown_fields(&what, &input["spec"], &typed["spec"]);
                    seen += 1;
                }
            }
        }
        assert!(seen >= 28, "only {seen} ClusterNetworkPolicies in the cases");
    }

    /// docs/conformance.md lists every case (and no case that is gone).
    #[test]
    fn the_documentation_lists_every_case() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(dir.join("../docs/conformance.md")).unwrap();
        let cases = load_dir(&dir.join("conformance/cases")).unwrap();
        for c in &cases {
            assert!(doc.contains(&format!("| `{}` |", c.name)), "docs/conformance.md lacks case {}", c.name);
        }
        let listed = doc.lines().filter(|l| l.starts_with("| `") && !l.starts_with("| `WEIR_")).count();
        assert_eq!(listed, cases.len(), "docs/conformance.md lists cases that do not exist");
    }
}
