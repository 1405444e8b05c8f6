//! What a runtime asks of one attachment beyond the network's config: static
//! addresses and a MAC (podman's `--ip`/`--mac-address`, `podman network
//! reload`, Multus annotations). Read where the reference plugins read them:
//!
//! - addresses (host-local): `CNI_ARGS` `IP=`, then `args.cni.ips`, then
//!   `runtimeConfig.ips` (the `ips` capability); all of them are wanted, at
//!   most one per range set. `IP=` may also be a comma list (one address per
//!   family), which the reference takes as one malformed address.
//! - the MAC (bridge): `runtimeConfig.mac` (the `mac` capability) over
//!   `args.cni.mac` over `CNI_ARGS` `MAC=`.
//!
//! - egress shaping (bandwidth): `runtimeConfig.bandwidth.egressRate` or
//!   `egressBurst` non-zero (the `bandwidth` capability). Weir shapes
//!   nothing; it only chooses how its programs attach, since the reference
//!   bandwidth plugin shapes a pod's egress through the host veth's
//!   `ingress` qdisc, which cannot sit beside clsact (see
//!   [`crate::config::Policy::attach_for`]). Malformed values are left to
//!   the bandwidth plugin, which owns the field.
//!
//! An address may carry a prefix length (`10.244.1.9/24`), ignored as the
//! reference ignores it: the range decides the prefix. Parsed at ADD only:
//! DEL must succeed whatever the request held.

use crate::config::Env;
use crate::error::{CniError, Result};
use serde_json::Value;
use std::net::IpAddr;

/// One requested address and where it was asked for (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedIp {
    pub addr: IpAddr,
    pub field: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    /// Without duplicates, in the order asked.
    pub ips: Vec<RequestedIp>,
    pub mac: Option<[u8; 6]>,
    /// The pod's egress is to be shaped by a chained bandwidth plugin.
    pub egress_shaped: bool,
}

/// Where a value came from decides the error code: the environment (4) or
/// the configuration (7).
#[derive(Clone, Copy)]
enum Source {
    Env,
    Config,
}

fn invalid(source: Source, msg: String) -> CniError {
    match source {
        Source::Env => CniError::env(msg),
        Source::Config => CniError::config(msg),
    }
}

pub fn parse(raw: &Value, env: &Env) -> Result<Requested> {
    let mut req = Requested::default();
    if let Some(list) = env.arg("IP").filter(|s| !s.is_empty()) {
        for (i, item) in list.split(',').enumerate() {
            let field =
                if list.contains(',') { format!("CNI_ARGS IP= (item {})", i + 1) } else { "CNI_ARGS IP=".into() };
            req.push_ip(parse_ip(item.trim(), &field, Source::Env)?, field);
        }
    }
    for (path, v) in
        [("args.cni.ips", raw.pointer("/args/cni/ips")), ("runtimeConfig.ips", raw.pointer("/runtimeConfig/ips"))]
    {
        match v {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let field = format!("{path}[{i}]");
                    let s = item.as_str().ok_or_else(|| {
                        CniError::config(format!(
                            "{field}: expected an address string such as \"10.244.1.9\", got {item}"
                        ))
                    })?;
                    req.push_ip(parse_ip(s, &field, Source::Config)?, field);
                }
            }
            Some(other) => {
                return Err(CniError::config(format!("{path}: expected a list of addresses, got {other}")));
            }
        }
    }
    // Lowest precedence first; a later source overrides.
    if let Some(s) = env.arg("MAC").filter(|s| !s.is_empty()) {
        req.mac = Some(parse_mac(s, "CNI_ARGS MAC=", Source::Env)?);
    }
    for (path, v) in
        [("args.cni.mac", raw.pointer("/args/cni/mac")), ("runtimeConfig.mac", raw.pointer("/runtimeConfig/mac"))]
    {
        match v {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => req.mac = Some(parse_mac(s, path, Source::Config)?),
            Some(other) => {
                return Err(CniError::config(format!(
                    "{path}: expected a MAC string such as \"0a:58:0a:f4:01:09\", got {other}"
                )))
            }
        }
    }
    req.egress_shaped = ["egressRate", "egressBurst"]
        .iter()
        .any(|f| raw.pointer(&format!("/runtimeConfig/bandwidth/{f}")).and_then(Value::as_u64).is_some_and(|v| v > 0));
    Ok(req)
}

impl Requested {
    fn push_ip(&mut self, addr: IpAddr, field: String) {
        if !self.ips.iter().any(|r| r.addr == addr) {
            self.ips.push(RequestedIp { addr, field });
        }
    }
}

fn parse_ip(s: &str, field: &str, source: Source) -> Result<IpAddr> {
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    let parsed = if s.contains('/') { s.parse::<ipnet::IpNet>().ok().map(|n| n.addr()) } else { addr.parse().ok() };
    parsed.ok_or_else(|| {
        invalid(source, format!("{field}: {s:?} is not an IP address; write e.g. 10.244.1.9 or fd00:10:244:1::9"))
    })
}

fn parse_mac(s: &str, field: &str, source: Source) -> Result<[u8; 6]> {
    let mac = weir_bpf::addr::parse_mac(s).ok_or_else(|| {
        invalid(source, format!("{field}: {s:?} is not a MAC address; write six hex bytes such as 0a:58:0a:f4:01:09"))
    })?;
    if !weir_bpf::addr::is_unicast_mac(mac) {
        return Err(invalid(
            source,
            format!(
                "{field}: {s} is not a unicast MAC (a group bit set in the first byte, or all zero); an interface \
                 needs one with the first byte even, such as 0a:58:0a:f4:01:09"
            ),
        ));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;
    use serde_json::json;

    fn env(args: &str) -> Env {
        Env { args: crate::config::parse_cni_args(args).unwrap(), ..Default::default() }
    }

    fn ips(r: &Requested) -> Vec<String> {
        r.ips.iter().map(|i| format!("{} ({})", i.addr, i.field)).collect()
    }

    #[test]
    fn nothing_asked_is_nothing_requested() {
        assert_eq!(parse(&json!({}), &env("IgnoreUnknown=1;K8S_POD_NAME=p")).unwrap(), Requested::default());
        assert_eq!(
            parse(&json!({"runtimeConfig": {"ips": [], "mac": ""}}), &env("IP=;MAC=")).unwrap(),
            Requested::default()
        );
    }

    #[test]
    fn addresses_come_from_every_source_once_and_prefixes_are_dropped() {
        let raw =
            json!({"args": {"cni": {"ips": ["10.1.0.9"]}}, "runtimeConfig": {"ips": ["fd00::9/64", "10.1.0.9/24"]}});
        let r = parse(&raw, &env("IgnoreUnknown=1;IP=10.1.0.9")).unwrap();
        assert_eq!(ips(&r), ["10.1.0.9 (CNI_ARGS IP=)", "fd00::9 (runtimeConfig.ips[0])"]);
        let r = parse(&json!({}), &env("IP=10.1.0.9, fd00::9")).unwrap();
        assert_eq!(ips(&r), ["10.1.0.9 (CNI_ARGS IP= (item 1))", "fd00::9 (CNI_ARGS IP= (item 2))"]);
    }

    #[test]
    fn the_capability_mac_wins_over_args_over_cni_args() {
        let mac = |raw: Value, args: &str| parse(&raw, &env(args)).unwrap().mac.map(weir_bpf::addr::format_mac);
        assert_eq!(mac(json!({}), "MAC=0a:00:00:00:00:01").as_deref(), Some("0a:00:00:00:00:01"));
        assert_eq!(
            mac(json!({"args": {"cni": {"mac": "0a:00:00:00:00:02"}}}), "MAC=0a:00:00:00:00:01").as_deref(),
            Some("0a:00:00:00:00:02")
        );
        let both =
            json!({"args": {"cni": {"mac": "0a:00:00:00:00:02"}}, "runtimeConfig": {"mac": "0A:00:00:00:00:03"}});
        assert_eq!(mac(both, "MAC=0a:00:00:00:00:01").as_deref(), Some("0a:00:00:00:00:03"));
    }

    #[test]
    fn malformed_input_names_the_field_and_the_fix() {
        let e = parse(&json!({}), &env("IP=10.1.0.300")).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.starts_with("CNI_ARGS IP=: \"10.1.0.300\" is not an IP address"), "{}", e.msg);
        let e = parse(&json!({}), &env("IP=10.1.0.9,nope")).unwrap_err();
        assert!(e.msg.starts_with("CNI_ARGS IP= (item 2): \"nope\""), "{}", e.msg);
        let e = parse(&json!({"runtimeConfig": {"ips": ["10.1.0.9/33"]}}), &env("")).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.starts_with("runtimeConfig.ips[0]"), "{}", e.msg);
        let e = parse(&json!({"runtimeConfig": {"ips": "10.1.0.9"}}), &env("")).unwrap_err();
        assert!(e.msg.starts_with("runtimeConfig.ips: expected a list"), "{}", e.msg);
        let e = parse(&json!({"args": {"cni": {"ips": [7]}}}), &env("")).unwrap_err();
        assert!(e.msg.starts_with("args.cni.ips[0]: expected an address string"), "{}", e.msg);
        let e = parse(&json!({}), &env("MAC=0a:00:00:00:01")).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.starts_with("CNI_ARGS MAC=: \"0a:00:00:00:01\" is not a MAC address"), "{}", e.msg);
        let e = parse(&json!({"runtimeConfig": {"mac": 5}}), &env("")).unwrap_err();
        assert!(e.msg.starts_with("runtimeConfig.mac: expected a MAC string"), "{}", e.msg);
    }

    #[test]
    fn only_unicast_macs_are_accepted() {
        for bad in ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "33:33:00:00:00:01"] {
            let e = parse(&json!({"runtimeConfig": {"mac": bad}}), &env("")).unwrap_err();
            assert!(e.msg.starts_with(&format!("runtimeConfig.mac: {bad} is not a unicast MAC")), "{}", e.msg);
        }
        assert!(parse(&json!({}), &env("MAC=02:42:ac:11:00:02")).is_ok());
    }

    #[test]
    fn egress_is_shaped_when_the_bandwidth_capability_asks_for_an_egress_rate_or_burst() {
        let shaped = |rc: Value| parse(&json!({ "runtimeConfig": rc }), &env("")).unwrap().egress_shaped;
        assert!(!parse(&json!({}), &env("")).unwrap().egress_shaped);
        assert!(!shaped(json!({ "bandwidth": { "ingressRate": 1000, "ingressBurst": 1000 } })));
        assert!(!shaped(json!({ "bandwidth": { "egressRate": 0, "egressBurst": 0 } })));
        assert!(shaped(json!({ "bandwidth": { "egressRate": 8_000_000, "egressBurst": 80_000 } })));
        assert!(shaped(json!({ "bandwidth": { "egressBurst": 80_000 } })));
        // the bandwidth plugin owns the field and refuses what it cannot read
        assert!(!shaped(json!({ "bandwidth": "fast" })));
        assert!(!shaped(json!({ "bandwidth": { "egressRate": "8M" } })));
    }
}
