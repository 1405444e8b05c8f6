//! Pod addresses in case objects. Pod IPs exist only once the lab runs, so
//! cases write placeholders that the runner resolves right before each
//! apply, from `weirctl lab get pods -o json`:
//!
//! - `{{ip x/b}}`        the pod's IPv4 address
//! - `{{hostcidr x/b}}`  that address as a host prefix (/32)
//! - `{{cidr x/b 24}}`   the /24 network that holds the address
//! - `{{ip6 x/b}}`, `{{hostcidr6 x/b}}` (/128), `{{cidr6 x/b 64}}`: the same
//!   for the pod's IPv6 address
//!
//! Resolution happens per step, so a pod recreated with a new address
//! resolves to the new one in later steps.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use serde_yaml_ng::Value;

use crate::expect::PodRef;

pub type PodIps = BTreeMap<PodRef, Vec<IpAddr>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    Ip(PodRef, Fam),
    HostCidr(PodRef, Fam),
    Cidr(PodRef, Fam, u8),
}

impl Placeholder {
    pub fn pod(&self) -> &PodRef {
        match self {
            Placeholder::Ip(p, _) | Placeholder::HostCidr(p, _) | Placeholder::Cidr(p, _, _) => p,
        }
    }

    fn family(&self) -> Fam {
        match self {
            Placeholder::Ip(_, f) | Placeholder::HostCidr(_, f) | Placeholder::Cidr(_, f, _) => *f,
        }
    }

    fn parse(inner: &str) -> Result<Placeholder> {
        let words: Vec<&str> = inner.split_whitespace().collect();
        let pod = |w: &str| PodRef::parse(w).map_err(|e| anyhow!("placeholder {{{{{inner}}}}}: {e}"));
        let (word, fam) = match words.first().copied() {
            Some(w) if w.ends_with('6') => (&w[..w.len() - 1], Fam::V6),
            Some(w) => (w, Fam::V4),
            None => ("", Fam::V4),
        };
        let max = if fam == Fam::V4 { 32 } else { 128 };
        match (word, &words[words.len().min(1)..]) {
            ("ip", [p]) => Ok(Placeholder::Ip(pod(p)?, fam)),
            ("hostcidr", [p]) => Ok(Placeholder::HostCidr(pod(p)?, fam)),
            ("cidr", [p, len]) => {
                let len: u8 = len
                    .parse()
                    .map_err(|_| anyhow!("placeholder {{{{{inner}}}}}: prefix length {len:?} is not a number"))?;
                if len > max {
                    bail!("placeholder {{{{{inner}}}}}: prefix length {len} exceeds {max}");
                }
                Ok(Placeholder::Cidr(pod(p)?, fam, len))
            }
            _ => bail!(
                "placeholder {{{{{inner}}}}}: use {{{{ip NS/POD}}}}, {{{{hostcidr NS/POD}}}}, {{{{cidr NS/POD LEN}}}} \
                 (or ip6, hostcidr6, cidr6 for the IPv6 address)"
            ),
        }
    }

    fn resolve(&self, ips: &PodIps) -> Result<String> {
        let pod = self.pod();
        let want_v6 = self.family() == Fam::V6;
        let ip = ips.get(pod).and_then(|a| a.iter().find(|ip| ip.is_ipv6() == want_v6)).ok_or_else(|| {
            anyhow!(
                "placeholder for {pod}: the lab reports no {} address for that pod",
                if want_v6 { "IPv6" } else { "IPv4" }
            )
        })?;
        Ok(match self {
            Placeholder::Ip(..) => ip.to_string(),
            Placeholder::HostCidr(..) => format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }),
            Placeholder::Cidr(_, _, len) => network(*ip, *len)?,
        })
    }
}

/// The network address of `ip` under a `len`-bit prefix, as `addr/len`.
pub fn network(ip: IpAddr, len: u8) -> Result<String> {
    match ip {
        IpAddr::V4(v4) => {
            if len > 32 {
                bail!("prefix length {len} is longer than an IPv4 address ({ip})");
            }
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            Ok(format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(v4) & mask)))
        }
        IpAddr::V6(v6) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            Ok(format!("{}/{len}", std::net::Ipv6Addr::from(u128::from(v6) & mask)))
        }
    }
}

/// Splits a string into literal text and placeholders.
fn scan(s: &str) -> Result<Vec<Result<String, Placeholder>>> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Ok(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").with_context(|| format!("unterminated placeholder in {s:?}: missing }}}}"))?;
        out.push(Err(Placeholder::parse(after[..end].trim())?));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Ok(rest.to_string()));
    }
    Ok(out)
}

/// Every placeholder in an object, in document order.
pub fn placeholders(v: &Value) -> Result<Vec<Placeholder>> {
    let mut out = Vec::new();
    walk(v, &mut |s| {
        for part in scan(s)? {
            if let Err(p) = part {
                out.push(p);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

fn walk(v: &Value, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
    match v {
        Value::String(s) => f(s),
        Value::Sequence(seq) => seq.iter().try_for_each(|e| walk(e, f)),
        Value::Mapping(m) => m.iter().try_for_each(|(k, e)| {
            walk(k, f)?;
            walk(e, f)
        }),
        Value::Tagged(t) => walk(&t.value, f),
        _ => Ok(()),
    }
}

/// A copy of `v` with every placeholder replaced.
pub fn resolve(v: &Value, ips: &PodIps) -> Result<Value> {
    Ok(match v {
        Value::String(s) if s.contains("{{") => {
            let mut out = String::new();
            for part in scan(s)? {
                match part {
                    Ok(text) => out.push_str(&text),
                    Err(p) => out.push_str(&p.resolve(ips)?),
                }
            }
            Value::String(out)
        }
        Value::Sequence(seq) => Value::Sequence(seq.iter().map(|e| resolve(e, ips)).collect::<Result<_>>()?),
        Value::Mapping(m) => {
            let mut out = serde_yaml_ng::Mapping::new();
            for (k, e) in m {
                out.insert(resolve(k, ips)?, resolve(e, ips)?);
            }
            Value::Mapping(out)
        }
        other => other.clone(),
    })
}

/// Reads pod addresses from `weirctl lab get pods -o json`. Accepted
/// shapes: a Kubernetes PodList (`items[].metadata`, `status.podIP(s)`), a
/// bare list of such pods or of `{namespace, name, ip|ips}`, or a map
/// `{"x/a": "10.0.0.5" | ["10.0.0.5", ...] | {ips: [...]}}`.
pub fn parse_pod_ips(text: &str) -> Result<PodIps> {
    let v: Json = serde_json::from_str(text).context("`weirctl lab get pods -o json` did not print JSON")?;
    let mut out = PodIps::new();
    let items: Vec<&Json> = match &v {
        Json::Object(o) if o.contains_key("items") => {
            o["items"].as_array().context("`items` is not a list")?.iter().collect()
        }
        Json::Object(o) if o.contains_key("pods") => {
            o["pods"].as_array().context("`pods` is not a list")?.iter().collect()
        }
        Json::Array(a) => a.iter().collect(),
        Json::Object(o) => {
            for (k, val) in o {
                let pod = PodRef::parse(k).map_err(|e| anyhow!("pod list key: {e}"))?;
                out.insert(pod, ips_of(val)?);
            }
            return Ok(out);
        }
        _ => bail!("pod list: unexpected JSON {v}"),
    };
    for it in items {
        let field = |k: &str| it.get("metadata").and_then(|m| m.get(k)).or_else(|| it.get(k)).and_then(Json::as_str);
        let ns = field("namespace").with_context(|| format!("pod entry without namespace: {it}"))?;
        let name = field("name").with_context(|| format!("pod entry without name: {it}"))?;
        let src = it.get("status").unwrap_or(it);
        out.insert(PodRef::new(ns, name), ips_of(src)?);
    }
    Ok(out)
}

fn ips_of(v: &Json) -> Result<Vec<IpAddr>> {
    let parse = |s: &str| -> Result<IpAddr> {
        let bare = s.split('/').next().unwrap_or(s);
        bare.parse().with_context(|| format!("{s:?} is not an IP address"))
    };
    let mut out = Vec::new();
    match v {
        Json::String(s) => out.push(parse(s)?),
        Json::Array(a) => {
            for e in a {
                out.extend(ips_of(e)?);
            }
        }
        Json::Object(o) => {
            for key in ["podIPs", "ips", "addresses"] {
                if let Some(list) = o.get(key) {
                    out.extend(ips_of(list)?);
                }
            }
            if out.is_empty() {
                for key in ["podIP", "ip", "address"] {
                    if let Some(Json::String(s)) = o.get(key) {
                        out.push(parse(s)?);
                    }
                }
            }
        }
        _ => {}
    }
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips() -> PodIps {
        PodIps::from([
            (PodRef::new("x", "b"), vec!["10.244.1.7".parse().unwrap(), "fd00:10:244:1::7".parse().unwrap()]),
            (PodRef::new("y", "b"), vec!["fd00::9".parse().unwrap()]),
        ])
    }

    fn yaml(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    #[test]
    fn ip_hostcidr_and_cidr_resolve() {
        let v = yaml("{cidr: '{{cidr x/b 24}}', except: ['{{hostcidr x/b}}'], ip: 'addr={{ ip x/b }}.'}");
        let r = resolve(&v, &ips()).unwrap();
        assert_eq!(r["cidr"].as_str(), Some("10.244.1.0/24"));
        assert_eq!(r["except"][0].as_str(), Some("10.244.1.7/32"));
        assert_eq!(r["ip"].as_str(), Some("addr=10.244.1.7."));
        let r = resolve(
            &yaml("['{{cidr x/b 4}}', '{{cidr x/b 0}}', '{{hostcidr6 y/b}}', '{{cidr6 y/b 64}}', '{{ip6 x/b}}', '{{cidr6 x/b 48}}']"),
            &ips(),
        )
        .unwrap();
        assert_eq!(r[0].as_str(), Some("0.0.0.0/4"));
        assert_eq!(r[1].as_str(), Some("0.0.0.0/0"));
        assert_eq!(r[2].as_str(), Some("fd00::9/128"));
        assert_eq!(r[3].as_str(), Some("fd00::/64"));
        assert_eq!(r[4].as_str(), Some("fd00:10:244:1::7"));
        assert_eq!(r[5].as_str(), Some("fd00:10:244::/48"));
    }

    #[test]
    fn strings_without_placeholders_are_untouched() {
        let v = yaml("{a: plain, b: 3, c: [x, {d: e}]}");
        assert_eq!(resolve(&v, &ips()).unwrap(), v);
        assert!(placeholders(&v).unwrap().is_empty());
    }

    #[test]
    fn placeholders_are_listed_in_order() {
        let v = yaml("{a: '{{ip x/a}} {{cidr y/c 16}}', b: ['{{hostcidr z/b}}']}");
        assert_eq!(
            placeholders(&v).unwrap(),
            vec![
                Placeholder::Ip(PodRef::new("x", "a"), Fam::V4),
                Placeholder::Cidr(PodRef::new("y", "c"), Fam::V4, 16),
                Placeholder::HostCidr(PodRef::new("z", "b"), Fam::V4),
            ]
        );
    }

    #[test]
    fn errors_name_the_placeholder() {
        for (s, needle) in [
            ("'{{ip xb}}'", "NAMESPACE/POD"),
            ("'{{mask x/b}}'", "use {{ip"),
            ("'{{cidr x/b big}}'", "not a number"),
            ("'{{cidr x/b 33}}'", "exceeds 32"),
            ("'{{cidr6 x/b 129}}'", "exceeds 128"),
            ("'{{ip}}'", "use {{ip"),
            ("'{{ip x/b'", "unterminated"),
        ] {
            let e = format!("{:#}", placeholders(&yaml(s)).unwrap_err());
            assert!(e.contains(needle), "{s}: {e}");
        }
        let e = format!("{:#}", resolve(&yaml("'{{ip z/z}}'"), &ips()).unwrap_err());
        assert!(e.contains("z/z"), "{e}");
        // y/b has only an IPv6 address.
        let e = format!("{:#}", resolve(&yaml("'{{ip y/b}}'"), &ips()).unwrap_err());
        assert!(e.contains("no IPv4 address"), "{e}");
        assert!(network("10.0.0.1".parse().unwrap(), 33).is_err());
    }

    #[test]
    fn pod_lists_in_every_accepted_shape() {
        let want = |m: &PodIps| {
            assert_eq!(m[&PodRef::new("x", "a")], vec!["10.244.1.2".parse::<IpAddr>().unwrap()]);
            assert_eq!(m[&PodRef::new("y", "b")].len(), 2);
        };
        want(
            &parse_pod_ips(
                r#"{"kind":"PodList","items":[
                {"metadata":{"namespace":"x","name":"a"},"status":{"podIP":"10.244.1.2","podIPs":[{"ip":"10.244.1.2"}]}},
                {"metadata":{"namespace":"y","name":"b"},"status":{"podIPs":[{"ip":"10.244.1.3"},{"ip":"fd00::3"}]}}]}"#,
            )
            .unwrap(),
        );
        want(
            &parse_pod_ips(
                r#"[{"namespace":"x","name":"a","ip":"10.244.1.2"},{"namespace":"y","name":"b","ips":["10.244.1.3/24","fd00::3/64"]}]"#,
            )
            .unwrap(),
        );
        want(&parse_pod_ips(r#"{"x/a":"10.244.1.2","y/b":{"ips":["10.244.1.3","fd00::3"]}}"#).unwrap());
        want(&parse_pod_ips(r#"{"pods":[{"namespace":"x","name":"a","ips":["10.244.1.2"]},{"namespace":"y","name":"b","ips":["10.244.1.3","fd00::3"]}]}"#).unwrap());
        assert!(parse_pod_ips("not json").is_err());
        assert!(parse_pod_ips(r#"[{"name":"a"}]"#).is_err());
    }
}
