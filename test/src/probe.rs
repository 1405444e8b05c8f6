//! Probe results, their comparison with the expectation, and the truth
//! tables printed for a failure (upstream's shape: a header row of
//! destinations, one row per source, `.` for a connection, `X` for none,
//! `?` for no answer; in the comparison `.` is right and `X` wrong).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use crate::case::Protocol;
use crate::expect::{Matrix, PodRef, Verdict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Connected,
    Blocked,
    /// The lab cannot run this probe here (SCTP without kernel sockets).
    Unsupported,
    /// Anything else the lab said about the cell.
    Other(String),
}

/// `weirctl lab probe -o json`:
/// `{"port":80,"protocol":"TCP","via":"service","results":{"x/a":{"x/b":true}}}`
/// where `results[from][to]` (the client is the outer key, as in
/// upstream's truth tables) is true, false or "unsupported".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutput {
    pub port: u16,
    pub protocol: String,
    pub results: BTreeMap<PodRef, BTreeMap<PodRef, Observed>>,
    /// What the probes of each destination dialed (`ip:port`), when the
    /// lab says (`targets`; the verdict runner leaves it empty).
    pub targets: BTreeMap<PodRef, String>,
}

pub fn parse_probe(text: &str) -> Result<ProbeOutput> {
    let v: Json = serde_json::from_str(text.trim()).context("`weirctl lab probe -o json` did not print JSON")?;
    let port = v.get("port").and_then(Json::as_u64).context("probe output: no numeric `port`")? as u16;
    let protocol = v.get("protocol").and_then(Json::as_str).context("probe output: no `protocol`")?.to_string();
    let res = v.get("results").and_then(Json::as_object).context("probe output: no `results` map")?;
    let mut results = BTreeMap::new();
    for (from, row) in res {
        let from = PodRef::parse(from).map_err(anyhow::Error::msg).context("probe output: results key")?;
        let row = row.as_object().with_context(|| format!("probe output: results[{from}] is not a map"))?;
        let mut out = BTreeMap::new();
        for (to, cell) in row {
            let to = PodRef::parse(to).map_err(anyhow::Error::msg).context("probe output: results row key")?;
            let obs = match cell {
                Json::Bool(true) => Observed::Connected,
                Json::Bool(false) => Observed::Blocked,
                Json::String(s) if s == "unsupported" => Observed::Unsupported,
                Json::String(s) => Observed::Other(s.clone()),
                other => Observed::Other(other.to_string()),
            };
            out.insert(to, obs);
        }
        results.insert(from, out);
    }
    let mut targets = BTreeMap::new();
    for (to, t) in v.get("targets").and_then(Json::as_object).into_iter().flatten() {
        let to = PodRef::parse(to).map_err(anyhow::Error::msg).context("probe output: targets key")?;
        targets.insert(to, t.as_str().context("probe output: a target is not a string")?.to_string());
    }
    Ok(ProbeOutput { port, protocol, results, targets })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every compared cell as expected.
    Match,
    /// At least one compared cell differs (or is missing).
    Mismatch,
    /// The lab could not probe (SCTP here): nothing was compared.
    Unsupported,
}

#[derive(Debug, Clone)]
pub struct Comparison {
    pub pods: Vec<PodRef>,
    pub expected: Matrix<Verdict>,
    pub observed: BTreeMap<PodRef, BTreeMap<PodRef, Observed>>,
    pub right: usize,
    pub wrong: Vec<(PodRef, PodRef)>,
    pub ignored_loopback: usize,
    pub unsupported: usize,
    /// Pods the lab probed that the case does not know of.
    pub unexpected_pods: Vec<PodRef>,
}

impl Comparison {
    pub fn outcome(&self) -> Outcome {
        if !self.wrong.is_empty() || !self.unexpected_pods.is_empty() {
            Outcome::Mismatch
        } else if self.unsupported > 0 {
            // Even when only part could not be probed: never call that a pass.
            Outcome::Unsupported
        } else {
            Outcome::Match
        }
    }

    fn obs(&self, f: &PodRef, t: &PodRef) -> Option<&Observed> {
        self.observed.get(f).and_then(|r| r.get(t))
    }

    /// Expected, observed and comparison tables plus a one-line count.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "reachability: correct {}, incorrect {}, loopback ignored {}, unsupported {}",
            self.right,
            self.wrong.len(),
            self.ignored_loopback,
            self.unsupported
        );
        if !self.unexpected_pods.is_empty() {
            let names: Vec<String> = self.unexpected_pods.iter().map(|p| p.to_string()).collect();
            let _ = writeln!(s, "probed pods the case does not know: {}", names.join(" "));
        }
        s.push_str("expected:\n");
        s.push_str(&table(&self.pods, |f, t| match self.expected.get(f, t) {
            Some(Verdict::Allow) => '.',
            Some(Verdict::Deny) => 'X',
            None => '?',
        }));
        s.push_str("observed:\n");
        s.push_str(&table(&self.pods, |f, t| mark(self.obs(f, t))));
        s.push_str("comparison (. right, X wrong, - loopback not compared):\n");
        s.push_str(&table(&self.pods, |f, t| {
            if f == t {
                '-'
            } else if self.wrong.iter().any(|(a, b)| a == f && b == t) {
                'X'
            } else if matches!(self.obs(f, t), Some(Observed::Unsupported)) && self.unsupported > 0 {
                'U'
            } else {
                '.'
            }
        }));
        s
    }
}

fn mark(o: Option<&Observed>) -> char {
    match o {
        Some(Observed::Connected) => '.',
        Some(Observed::Blocked) => 'X',
        Some(Observed::Unsupported) => 'U',
        Some(Observed::Other(_)) | None => '?',
    }
}

/// Upstream's truth-table layout, padded instead of tab-separated.
pub fn table(pods: &[PodRef], cell: impl Fn(&PodRef, &PodRef) -> char) -> String {
    let w = pods.iter().map(|p| p.to_string().len()).max().unwrap_or(1).max(1) + 1;
    let mut s = format!("{:<w$}", "-");
    for t in pods {
        let _ = write!(s, "{:<w$}", t.to_string());
    }
    s = s.trim_end().to_string();
    s.push('\n');
    for f in pods {
        let mut line = format!("{:<w$}", f.to_string());
        for t in pods {
            let _ = write!(line, "{:<w$}", cell(f, t));
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// Compares a probe with the expectation over `pods` (the pods the case
/// knows at this step). Loopback cells are not compared (upstream
/// ignores them: their semantics differ between plugins). An
/// "unsupported" cell is accepted as such only when `unsupported_ok` (SCTP
/// here); for TCP and UDP it means the lab could not probe, which is wrong.
pub fn compare(expected: &Matrix<Verdict>, out: &ProbeOutput, unsupported_ok: bool) -> Comparison {
    let pods = expected.pods.clone();
    let mut c = Comparison {
        pods: pods.clone(),
        expected: expected.clone(),
        observed: out.results.clone(),
        right: 0,
        wrong: Vec::new(),
        ignored_loopback: 0,
        unsupported: 0,
        unexpected_pods: Vec::new(),
    };
    let mut seen: Vec<PodRef> = out.results.keys().cloned().collect();
    for row in out.results.values() {
        seen.extend(row.keys().cloned());
    }
    seen.sort();
    seen.dedup();
    c.unexpected_pods = seen.into_iter().filter(|p| !pods.contains(p)).collect();
    for f in &pods {
        for t in &pods {
            if f == t {
                c.ignored_loopback += 1;
                continue;
            }
            let want = expected.get(f, t).copied();
            match (want, c.obs(f, t)) {
                (_, Some(Observed::Unsupported)) if unsupported_ok => c.unsupported += 1,
                (Some(Verdict::Allow), Some(Observed::Connected)) | (Some(Verdict::Deny), Some(Observed::Blocked)) => {
                    c.right += 1
                }
                _ => c.wrong.push((f.clone(), t.clone())),
            }
        }
    }
    c
}

/// Checks the probe answered the question asked.
pub fn check_header(out: &ProbeOutput, port: u16, protocol: Protocol) -> Result<()> {
    if out.port != port || !out.protocol.eq_ignore_ascii_case(&protocol.to_string()) {
        bail!("asked for {protocol}/{port}, the lab answered for {}/{}", out.protocol, out.port);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::Expectation;
    use crate::model::model_pods;

    fn probe_json(cell: impl Fn(&PodRef, &PodRef) -> Json) -> String {
        let mut res = serde_json::Map::new();
        for f in model_pods() {
            let mut row = serde_json::Map::new();
            for t in model_pods() {
                row.insert(t.to_string(), cell(&f, &t));
            }
            res.insert(f.to_string(), Json::Object(row));
        }
        serde_json::json!({"port": 80, "protocol": "TCP", "via": "service", "results": res}).to_string()
    }

    fn expected(y: &str) -> Matrix<Verdict> {
        serde_yaml_ng::from_str::<Expectation>(y).unwrap().evaluate(&model_pods()).unwrap()
    }

    #[test]
    fn matching_probe_is_a_match_and_loopback_is_ignored() {
        // Observed: nothing reaches x/a, not even x/a itself via its Service.
        let out = parse_probe(&probe_json(|_, t| Json::Bool(t.to_string() != "x/a"))).unwrap();
        let c = compare(&expected("{deny: [{to: x/a}]}"), &out, false);
        assert_eq!(c.outcome(), Outcome::Match);
        assert_eq!((c.right, c.wrong.len(), c.ignored_loopback), (72, 0, 9));
        // Loopback allowed while expected denied: still a match.
        let out = parse_probe(&probe_json(|f, t| Json::Bool(t.to_string() != "x/a" || f == t))).unwrap();
        assert_eq!(compare(&expected("{deny: [{to: x/a}]}"), &out, false).outcome(), Outcome::Match);
    }

    #[test]
    fn a_wrong_cell_is_a_mismatch_and_shows_in_the_tables() {
        let out = parse_probe(&probe_json(|_, _| Json::Bool(true))).unwrap();
        let c = compare(&expected("{deny: [{from: y/b, to: x/a}]}"), &out, false);
        assert_eq!(c.outcome(), Outcome::Mismatch);
        assert_eq!(c.wrong, vec![(PodRef::new("y", "b"), PodRef::new("x", "a"))]);
        let text = c.render();
        assert!(text.contains("incorrect 1"), "{text}");
        let cmp = text.split("comparison").nth(1).unwrap();
        let row = cmp.lines().find(|l| l.starts_with("y/b")).unwrap();
        assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["y/b", "X", ".", ".", ".", "-", ".", ".", ".", "."]);
        assert_eq!(cmp.lines().nth(1).unwrap().split_whitespace().next(), Some("-"));
    }

    #[test]
    fn missing_cells_and_unknown_pods_are_mismatches() {
        let mut text = probe_json(|_, _| Json::Bool(true));
        text = text.replace("\"z/c\":true}", "\"z/c\":true,\"q/q\":true}");
        let out = parse_probe(&text).unwrap();
        let c = compare(&expected("{}"), &out, false);
        assert_eq!(c.unexpected_pods, vec![PodRef::new("q", "q")]);
        assert_eq!(c.outcome(), Outcome::Mismatch);
        let out = parse_probe(r#"{"port":80,"protocol":"TCP","results":{"x/a":{"x/b":true}}}"#).unwrap();
        let c = compare(&expected("{}"), &out, false);
        assert_eq!(c.right, 1);
        assert_eq!(c.wrong.len(), 71);
    }

    #[test]
    fn unsupported_cells_never_pass() {
        let out = parse_probe(&probe_json(|_, _| Json::String("unsupported".into()))).unwrap();
        let c = compare(&expected("{deny: [{to: x/*}]}"), &out, true);
        assert_eq!(c.outcome(), Outcome::Unsupported);
        // For TCP or UDP an unsupported cell is a failure to probe.
        assert_eq!(compare(&expected("{deny: [{to: x/*}]}"), &out, false).outcome(), Outcome::Mismatch);
        assert_eq!(c.unsupported, 72);
        let out =
            parse_probe(&probe_json(
                |f, _| {
                    if f.ns == "x" {
                        Json::String("unsupported".into())
                    } else {
                        Json::Bool(true)
                    }
                },
            ))
            .unwrap();
        assert_eq!(compare(&expected("{}"), &out, true).outcome(), Outcome::Unsupported);
    }

    #[test]
    fn odd_cells_and_bad_output() {
        let out = parse_probe(&probe_json(|_, _| Json::String("error: netns gone".into()))).unwrap();
        assert_eq!(compare(&expected("{}"), &out, false).outcome(), Outcome::Mismatch);
        assert!(parse_probe("nope").is_err());
        assert!(parse_probe(r#"{"port":80,"protocol":"TCP"}"#).is_err());
        assert!(parse_probe(r#"{"port":80,"protocol":"TCP","results":{"xa":{}}}"#).is_err());
        let out = parse_probe(r#"{"port":81,"protocol":"udp","results":{}}"#).unwrap();
        assert!(check_header(&out, 81, Protocol::UDP).is_ok());
        assert!(check_header(&out, 80, Protocol::UDP).is_err());
    }
}
