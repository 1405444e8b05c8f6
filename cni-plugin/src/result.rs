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
    pub fn parse(v: &Value, what: &str) -> Result<CniResult> {
        let bad = |m: String| CniError::new(code::DECODE, format!("{what}: {m}"));
        let mut r = CniResult::default();
        if let Some(ifs) = v.get("interfaces").and_then(Value::as_array) {
            for (i, x) in ifs.iter().enumerate() {
                r.interfaces.push(Interface {
                    name: x.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                    mac: x.get("mac").and_then(Value::as_str).unwrap_or_default().to_string(),
                    sandbox: x.get("sandbox").and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from),
                    mtu: x.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
                });
                if x.get("name").is_none() {
                    return Err(bad(format!("interfaces[{i}] has no name")));
                }
            }
        }
        if let Some(ips) = v.get("ips").and_then(Value::as_array) {
            for (i, x) in ips.iter().enumerate() {
                let a = x.get("address").and_then(Value::as_str).ok_or_else(|| bad(format!("ips[{i}].address is missing")))?;
                let address = a.parse::<IpNet>().map_err(|_| bad(format!("ips[{i}].address {a:?} is not a CIDR")))?;
                let gateway = match x.get("gateway").and_then(Value::as_str) {
                    Some(g) => Some(g.parse::<IpAddr>().map_err(|_| bad(format!("ips[{i}].gateway {g:?} is not an IP")))?),
                    None => None,
                };
                let interface = x.get("interface").and_then(Value::as_u64).map(|n| n as usize);
                r.ips.push(IpConfig { address, gateway, interface });
            }
        }
        if let Some(routes) = v.get("routes").and_then(Value::as_array) {
            for (i, x) in routes.iter().enumerate() {
                let d = x.get("dst").and_then(Value::as_str).ok_or_else(|| bad(format!("routes[{i}].dst is missing")))?;
                let dst = d.parse::<IpNet>().map_err(|_| bad(format!("routes[{i}].dst {d:?} is not a CIDR")))?;
                let gw = match x.get("gw").and_then(Value::as_str) {
                    Some(g) => Some(g.parse::<IpAddr>().map_err(|_| bad(format!("routes[{i}].gw {g:?} is not an IP")))?),
                    None => None,
                };
                r.routes.push(Route { dst, gw });
            }
        }
        r.dns = v.get("dns").cloned().unwrap_or(Value::Null);
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
                Interface { name: "weir0123456789a".into(), mac: "02:00:00:00:00:02".into(), sandbox: None, mtu: Some(1500) },
                Interface { name: "eth0".into(), mac: "02:00:00:00:00:03".into(), sandbox: Some("/run/netns/p".into()), mtu: Some(1500) },
            ],
            ips: vec![
                IpConfig { address: "10.1.0.2/24".parse().unwrap(), gateway: Some("10.1.0.1".parse().unwrap()), interface: Some(2) },
                IpConfig { address: "fd00::2/64".parse().unwrap(), gateway: Some("fd00::1".parse().unwrap()), interface: Some(2) },
            ],
            routes: vec![Route { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("10.1.0.1".parse().unwrap()) }],
            dns: Value::Null,
        }
    }

    /// The exact bytes of every version's layout.
    #[test]
    fn golden_per_version() {
        let golden = |v: &str| include_str!("../tests/golden/result.json").lines()
            .find_map(|l| l.strip_prefix(&format!("{v} "))).unwrap().to_string();
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
}
