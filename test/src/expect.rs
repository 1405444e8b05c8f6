//! Expected reachability, written compactly and evaluated into a full matrix.
//!
//! A case never lists 81 cells. It states a default and then overrides,
//! the way upstream's reachability helpers do (`ExpectPeer`,
//! `ExpectAllIngress`, `ExpectAllEgress`, `Expect`):
//!
//! ```yaml
//! expect:
//!   default: allow
//!   deny:  [{to: "x/a"}]                 # every pod -> x/a
//!   allow: [{from: "x/b", to: "x/a"}]    # except x/b -> x/a
//! ```
//!
//! Keys are applied in document order and entries of a list in list order,
//! so later entries override earlier ones. When a case needs deny, allow,
//! deny again, `expect` may be a list of such maps, applied one after the
//! other. A peer pattern is `ns/pod` where either side may be `*`; a lone
//! `*` is every pod. A missing `from` or `to` means every pod.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_yaml_ng::Value;

/// A pod in the matrix, written `ns/name` everywhere (upstream's PodString).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub ns: String,
    pub name: String,
}

impl PodRef {
    pub fn new(ns: &str, name: &str) -> PodRef {
        PodRef { ns: ns.to_string(), name: name.to_string() }
    }

    pub fn parse(s: &str) -> Result<PodRef, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(PodRef::new(ns, name)),
            _ => Err(format!("{s:?} is not a pod reference: write it as NAMESPACE/POD, e.g. \"x/a\"")),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.name)
    }
}

/// `*`, `ns/*`, `*/pod` or `ns/pod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    ns: Option<String>,
    pod: Option<String>,
    text: String,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Pattern { ns: None, pod: None, text: s.to_string() });
        }
        let (ns, pod) = s
            .split_once('/')
            .ok_or_else(|| format!("peer pattern {s:?}: write \"*\", \"NS/*\", \"*/POD\" or \"NS/POD\""))?;
        if ns.is_empty() || pod.is_empty() || pod.contains('/') {
            return Err(format!("peer pattern {s:?}: write \"*\", \"NS/*\", \"*/POD\" or \"NS/POD\""));
        }
        let side = |v: &str| if v == "*" { None } else { Some(v.to_string()) };
        Ok(Pattern { ns: side(ns), pod: side(pod), text: s.to_string() })
    }

    pub fn matches(&self, p: &PodRef) -> bool {
        self.ns.as_ref().is_none_or(|n| *n == p.ns) && self.pod.as_ref().is_none_or(|n| *n == p.name)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    fn parse(s: &str) -> Result<Verdict, String> {
        match s {
            "allow" => Ok(Verdict::Allow),
            "deny" => Ok(Verdict::Deny),
            _ => Err(format!("verdict {s:?}: use \"allow\" or \"deny\"")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub verdict: Verdict,
    pub from: Pattern,
    pub to: Pattern,
}

/// The parsed `expect:` block: a default and ordered overrides.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub struct Expectation {
    pub default: Verdict,
    pub rules: Vec<Rule>,
}

impl TryFrom<Value> for Expectation {
    type Error = String;

    fn try_from(v: Value) -> Result<Expectation, String> {
        let mut exp = Expectation { default: Verdict::Allow, rules: Vec::new() };
        let mut default_seen = false;
        let blocks: Vec<Value> = match v {
            Value::Sequence(seq) => seq,
            m @ Value::Mapping(_) => vec![m],
            Value::Null => Vec::new(),
            other => return Err(format!("expect: want a map (default/deny/allow) or a list of maps, got {other:?}")),
        };
        for (bi, block) in blocks.into_iter().enumerate() {
            let Value::Mapping(map) = block else {
                return Err(format!("expect[{bi}]: want a map with keys default, deny, allow"));
            };
            for (k, v) in map {
                let key = k.as_str().ok_or_else(|| format!("expect: key {k:?} is not a string"))?;
                match key {
                    "default" => {
                        if default_seen || !exp.rules.is_empty() {
                            return Err("expect: `default` must come first and only once".into());
                        }
                        let s = v.as_str().ok_or("expect.default: use \"allow\" or \"deny\"")?;
                        exp.default = Verdict::parse(s)?;
                        default_seen = true;
                    }
                    "deny" | "allow" => {
                        let verdict = Verdict::parse(key)?;
                        let entries = match v {
                            Value::Sequence(seq) => seq,
                            m @ Value::Mapping(_) => vec![m],
                            other => return Err(format!("expect.{key}: want a list of {{from, to}}, got {other:?}")),
                        };
                        for e in entries {
                            exp.rules.push(parse_rule(verdict, key, e)?);
                        }
                    }
                    other => return Err(format!("expect: unknown key {other:?} (known: default, deny, allow)")),
                }
            }
        }
        Ok(exp)
    }
}

fn parse_rule(verdict: Verdict, key: &str, e: Value) -> Result<Rule, String> {
    let Value::Mapping(m) = e else {
        return Err(format!("expect.{key}: each entry is a map {{from: PATTERN, to: PATTERN}}"));
    };
    let mut from = None;
    let mut to = None;
    for (k, v) in m {
        let slot = match k.as_str() {
            Some("from") => &mut from,
            Some("to") => &mut to,
            _ => return Err(format!("expect.{key}: unknown field {k:?} (known: from, to)")),
        };
        let pat = v.as_str().ok_or_else(|| format!("expect.{key}: pattern {v:?} must be a string"))?;
        *slot = Some(Pattern::parse(pat)?);
    }
    if from.is_none() && to.is_none() {
        return Err(format!("expect.{key}: an entry needs `from`, `to` or both"));
    }
    let star = || Pattern::parse("*").expect("static pattern");
    Ok(Rule { verdict, from: from.unwrap_or_else(star), to: to.unwrap_or_else(star) })
}

/// A reachability matrix over an ordered pod list: `cells[from][to]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix<T> {
    pub pods: Vec<PodRef>,
    pub cells: BTreeMap<PodRef, BTreeMap<PodRef, T>>,
}

impl<T: Clone> Matrix<T> {
    pub fn filled(pods: &[PodRef], v: T) -> Matrix<T> {
        let row: BTreeMap<PodRef, T> = pods.iter().map(|p| (p.clone(), v.clone())).collect();
        Matrix { pods: pods.to_vec(), cells: pods.iter().map(|p| (p.clone(), row.clone())).collect() }
    }

    pub fn get(&self, from: &PodRef, to: &PodRef) -> Option<&T> {
        self.cells.get(from).and_then(|r| r.get(to))
    }
}

impl Expectation {
    /// The full matrix over `pods`. Every pattern must match at least one
    /// pod: a pattern matching nothing is almost always a typo in a case.
    pub fn evaluate(&self, pods: &[PodRef]) -> Result<Matrix<Verdict>, String> {
        let mut m = Matrix::filled(pods, self.default);
        for r in &self.rules {
            for (pat, side) in [(&r.from, "from"), (&r.to, "to")] {
                if !pods.iter().any(|p| pat.matches(p)) {
                    let known: Vec<String> = pods.iter().map(|p| p.to_string()).collect();
                    return Err(format!("{side} pattern {pat:?} matches no pod (pods: {})", known.join(" ")));
                }
            }
            for f in pods.iter().filter(|p| r.from.matches(p)) {
                let row = m.cells.get_mut(f).expect("row exists");
                for t in pods.iter().filter(|p| r.to.matches(p)) {
                    row.insert(t.clone(), r.verdict);
                }
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<PodRef> {
        let mut v = Vec::new();
        for ns in ["x", "y", "z"] {
            for p in ["a", "b", "c"] {
                v.push(PodRef::new(ns, p));
            }
        }
        v
    }

    fn exp(yaml: &str) -> Expectation {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn cell(m: &Matrix<Verdict>, f: &str, t: &str) -> Verdict {
        *m.get(&PodRef::parse(f).unwrap(), &PodRef::parse(t).unwrap()).unwrap()
    }

    #[test]
    fn default_alone_fills_every_cell() {
        let m = exp("{default: deny}").evaluate(&pods()).unwrap();
        assert_eq!(m.cells.len(), 9);
        assert!(m.cells.values().all(|r| r.len() == 9 && r.values().all(|v| *v == Verdict::Deny)));
        let m = exp("{}").evaluate(&pods()).unwrap();
        assert!(m.cells.values().all(|r| r.values().all(|v| *v == Verdict::Allow)));
    }

    #[test]
    fn namespace_wildcard_on_the_destination_is_all_ingress_of_a_namespace() {
        let m = exp("{default: allow, deny: [{from: '*', to: 'x/*'}]}").evaluate(&pods()).unwrap();
        for f in pods() {
            for t in pods() {
                let want = if t.ns == "x" { Verdict::Deny } else { Verdict::Allow };
                assert_eq!(m.get(&f, &t), Some(&want), "{f} -> {t}");
            }
        }
    }

    #[test]
    fn later_entries_override_earlier_ones() {
        let m = exp("{deny: [{to: x/a}], allow: [{from: x/b, to: x/a}]}").evaluate(&pods()).unwrap();
        assert_eq!(cell(&m, "x/b", "x/a"), Verdict::Allow);
        assert_eq!(cell(&m, "x/c", "x/a"), Verdict::Deny);
        assert_eq!(cell(&m, "y/b", "x/a"), Verdict::Deny);
        assert_eq!(cell(&m, "x/a", "x/b"), Verdict::Allow);
        // allow before deny in the document: the deny wins.
        let m = exp("{allow: [{from: x/b, to: x/a}], deny: [{to: x/a}]}").evaluate(&pods()).unwrap();
        assert_eq!(cell(&m, "x/b", "x/a"), Verdict::Deny);
    }

    #[test]
    fn a_list_of_blocks_applies_in_order() {
        let e = exp("[{default: allow, deny: [{from: x/a}]}, {allow: [{from: x/a, to: y/a}]}, {deny: [{to: y/*}]}]");
        let m = e.evaluate(&pods()).unwrap();
        assert_eq!(cell(&m, "x/a", "y/a"), Verdict::Deny);
        assert_eq!(cell(&m, "x/a", "z/a"), Verdict::Deny);
        assert_eq!(cell(&m, "x/b", "z/a"), Verdict::Allow);
        assert_eq!(cell(&m, "z/c", "y/b"), Verdict::Deny);
    }

    #[test]
    fn pod_name_wildcard_and_missing_sides() {
        let m = exp("{deny: [{from: '*/b'}]}").evaluate(&pods()).unwrap();
        assert_eq!(cell(&m, "y/b", "z/c"), Verdict::Deny);
        assert_eq!(cell(&m, "y/a", "z/c"), Verdict::Allow);
    }

    #[test]
    fn loopback_cells_are_evaluated_like_any_other() {
        // Comparison ignores them (see probe.rs); evaluation stays uniform.
        let m = exp("{deny: [{to: x/a}]}").evaluate(&pods()).unwrap();
        assert_eq!(cell(&m, "x/a", "x/a"), Verdict::Deny);
    }

    #[test]
    fn bad_input_is_rejected_with_the_field_named() {
        let bad = [
            ("{deny: [{from: x}]}", "pattern"),
            ("{deny: [{}]}", "needs"),
            ("{permit: []}", "unknown key"),
            ("{default: maybe}", "allow"),
            ("{deny: [{to: x/a}], default: deny}", "first"),
            ("{deny: [{to: x/a, port: 80}]}", "unknown field"),
        ];
        for (y, needle) in bad {
            let e = serde_yaml_ng::from_str::<Expectation>(y).unwrap_err().to_string();
            assert!(e.contains(needle), "{y}: {e}");
        }
    }

    #[test]
    fn a_pattern_matching_no_pod_is_an_error() {
        let e = exp("{deny: [{to: q/a}]}").evaluate(&pods()).unwrap_err();
        assert!(e.contains("q/a"), "{e}");
        let mut more = pods();
        more.push(PodRef::new("x", "d"));
        assert!(exp("{deny: [{to: x/d}]}").evaluate(&more).is_ok());
    }
}
