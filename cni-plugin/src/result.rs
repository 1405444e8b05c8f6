//! The ADD result (and `prevResult`) in every supported spec version's
//! layout: 0.3.x/0.4.0 carry `ips[].version`, 1.x does not; interfaces are
//! referenced by index from `ips[].interface` in all of them.

use crate::error::{code, CniError, Result};
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// Netns path for the pod side; absent for host-side interfaces.
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Value,
}

impl CniResult {
    /// Serialise for `version` (assumed supported).
    pub fn to_json(&self, version: &str) -> Value {
        let old = crate::config::version_key(version) < (1, 0, 0);
        let mtu_ok = crate::config::version_key(version) >= (1, 1, 0);
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                o.insert("mac".into(), json!(i.mac));
                if let (true, Some(m)) = (mtu_ok, i.mtu) {
                    o.insert("mtu".into(), json!(m));
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if old {
                    o.insert("version".into(), json!(if ip.address.addr().is_ipv4() { "4" } else { "6" }));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(g) = ip.gateway {
                    o.insert("gateway".into(), json!(g.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(g) = r.gw {
                    o.insert("gw".into(), json!(g.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert("dns".into(), if self.dns.is_null() { json!({}) } else { self.dns.clone() });
        Value::Object(out)
    }

    /// Read a result of any supported version (a `prevResult` or a delegated
    /// IPAM plugin's answer). `what` names it in errors.
    /// Parse a result (a `prevResult`, or a delegate's answer). Strict about
    /// what it reads: a field of the wrong type is an error naming it, never
    /// read as absent, so CHECK cannot pass against a result that says
    /// nothing. Unknown fields are ignored (other plugins add their own).
    pub fn parse(v: &Value, what: &str) -> Result<CniResult> {
        let bad = |m: String| CniError::new(code::DECODE, format!("{what}: {m}"));
        let obj = v.as_object().ok_or_else(|| bad("must be a JSON object".into()))?;
        let list = |key: &str| -> Result<&[Value]> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(&[]),
                Some(Value::Array(a)) => Ok(a),
                Some(_) => Err(bad(format!("{key} must be a list"))),
            }
        };
        let field = |x: &'_ Value, at: &str, key: &str| -> Result<Option<String>> {
            let o = x.as_object().ok_or_else(|| bad(format!("{at} must be an object")))?;
            match o.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(format!("{at}.{key} must be a string"))),
            }
        };
        let index = |x: &Value, at: &str, key: &str| -> Result<Option<u64>> {
            match x.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(n) => {
                    n.as_u64().map(Some).ok_or_else(|| bad(format!("{at}.{key} must be a non-negative integer")))
                }
            }
        };
        let mut r = CniResult::default();
        for (i, x) in list("interfaces")?.iter().enumerate() {
            let at = format!("interfaces[{i}]");
            let name = field(x, &at, "name")?.ok_or_else(|| bad(format!("{at} has no name")))?;
            let mtu = index(x, &at, "mtu")?;
            r.interfaces.push(Interface {
                name,
                mac: field(x, &at, "mac")?.unwrap_or_default(),
                sandbox: field(x, &at, "sandbox")?.filter(|s| !s.is_empty()),
                mtu: mtu
                    .map(|m| u32::try_from(m).map_err(|_| bad(format!("{at}.mtu {m} is out of range"))))
                    .transpose()?,
            });
        }
        for (i, x) in list("ips")?.iter().enumerate() {
            let at = format!("ips[{i}]");
            let a = field(x, &at, "address")?.ok_or_else(|| bad(format!("{at}.address is missing")))?;
            let address = a.parse::<IpNet>().map_err(|_| bad(format!("{at}.address {a:?} is not a CIDR")))?;
            let gateway = match field(x, &at, "gateway")? {
                Some(g) => Some(g.parse::<IpAddr>().map_err(|_| bad(format!("{at}.gateway {g:?} is not an IP")))?),
                None => None,
            };
            let interface = match index(x, &at, "interface")? {
                Some(n) if n as usize >= r.interfaces.len() => {
                    return Err(bad(format!(
                        "{at}.interface {n} names no interface (the result lists {})",
                        r.interfaces.len()
                    )))
                }
                n => n.map(|n| n as usize),
            };
            r.ips.push(IpConfig { address, gateway, interface });
        }
        for (i, x) in list("routes")?.iter().enumerate() {
            let at = format!("routes[{i}]");
            let d = field(x, &at, "dst")?.ok_or_else(|| bad(format!("{at}.dst is missing")))?;
            let dst = d.parse::<IpNet>().map_err(|_| bad(format!("{at}.dst {d:?} is not a CIDR")))?;
            let gw = match field(x, &at, "gw")? {
                Some(g) => Some(g.parse::<IpAddr>().map_err(|_| bad(format!("{at}.gw {g:?} is not an IP")))?),
                None => None,
            };
            r.routes.push(Route { dst, gw });
        }
        r.dns = match obj.get("dns") {
            None => Value::Null,
            Some(d @ (Value::Null | Value::Object(_))) => d.clone(),
            Some(_) => return Err(bad("dns must be an object".into())),
        };
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface { name: "cni0".into(), mac: "02:00:00:00:00:01".into(), sandbox: None, mtu: Some(1500) },
                Interface {
                    name: "weir0123456789a".into(),
                    mac: "02:00:00:00:00:02".into(),
                    sandbox: None,
                    mtu: Some(1500),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:03".into(),
                    sandbox: Some("/run/netns/p".into()),
                    mtu: Some(1500),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.1.0.2/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(2),
                },
                IpConfig {
                    address: "fd00::2/64".parse().unwrap(),
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some(2),
                },
            ],
            routes: vec![Route { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("10.1.0.1".parse().unwrap()) }],
            dns: Value::Null,
        }
    }

    /// The exact bytes of every version's layout.
    #[test]
    fn golden_per_version() {
        let golden = |v: &str| {
            include_str!("../tests/golden/result.json")
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{v} ")))
                .unwrap()
                .to_string()
        };
        for v in crate::config::SUPPORTED_VERSIONS {
            let want: Value = serde_json::from_str(&golden(v)).unwrap();
            assert_eq!(sample().to_json(v), want, "version {v}");
        }
    }

    #[test]
    fn parse_round_trips_every_version() {
        for v in crate::config::SUPPORTED_VERSIONS {
            let mut back = CniResult::parse(&sample().to_json(v), "prevResult").unwrap();
            back.dns = Value::Null;
            let mut want = sample();
            if crate::config::version_key(v) < (1, 1, 0) {
                want.interfaces.iter_mut().for_each(|i| i.mtu = None);
            }
            assert_eq!(back, want, "version {v}");
        }
    }

    #[test]
    fn bad_prev_result_names_the_field() {
        let e = CniResult::parse(&json!({"ips": [{"address": "10.0.0.1"}]}), "prevResult").unwrap_err();
        assert!(e.msg.starts_with("prevResult: ips[0].address"), "{}", e.msg);
    }

    /// `{"ips":"x"}` used to parse as a result with no addresses, so CHECK
    /// compared against nothing and passed.
    #[test]
    fn malformed_prev_results_are_errors_not_empty_results() {
        let cases = [
            (json!({"ips": "x"}), "prevResult: ips must be a list"),
            (json!({"interfaces": {}}), "prevResult: interfaces must be a list"),
            (json!({"routes": 1}), "prevResult: routes must be a list"),
            (json!({"ips": ["10.0.0.1/24"]}), "prevResult: ips[0] must be an object"),
            (json!({"ips": [{"address": 7}]}), "prevResult: ips[0].address must be a string"),
            (json!({"ips": [{"address": "10.0.0.2/24", "interface": "0"}]}), "prevResult: ips[0].interface must be"),
            (json!({"ips": [{"address": "10.0.0.2/24", "interface": 3}]}), "prevResult: ips[0].interface 3 names no"),
            (json!({"interfaces": [{"name": 1}]}), "prevResult: interfaces[0].name must be a string"),
            (json!({"interfaces": [{"name": "e", "mtu": -1}]}), "prevResult: interfaces[0].mtu must be"),
            (json!({"routes": [{"dst": "0.0.0.0/0", "gw": false}]}), "prevResult: routes[0].gw must be a string"),
            (json!({"dns": "8.8.8.8"}), "prevResult: dns must be an object"),
            (json!("x"), "prevResult: must be a JSON object"),
        ];
        for (v, want) in cases {
            let e = CniResult::parse(&v, "prevResult").unwrap_err();
            assert_eq!(e.code, code::DECODE);
            assert!(e.msg.starts_with(want), "{v}: {}", e.msg);
        }
        // Absent and null lists are empty, as the spec allows.
        let r = CniResult::parse(&json!({"cniVersion": "1.0.0", "ips": null, "dns": {}}), "prevResult").unwrap();
        assert!(r.ips.is_empty() && r.interfaces.is_empty());
    }
}
