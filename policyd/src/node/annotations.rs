//! What one node tells the others about itself, as annotations on its own
//! Node (flannel's `flannel.alpha.coreos.com/backend-*` scheme under Weir's
//! prefix): which backend it runs, the backend's data, and the underlay
//! address peers reach it at.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Prefix of every annotation Weir owns (sources keep these on Nodes).
pub const PREFIX: &str = "weir.io/";
/// `vxlan` or `host-gw`.
pub const BACKEND_TYPE: &str = "weir.io/backend-type";
/// JSON: [`VxlanData`] for vxlan, `{}` for host-gw.
pub const BACKEND_DATA: &str = "weir.io/backend-data";
/// The node's underlay address (where its VTEP listens, or its next hop).
pub const PUBLIC_IP: &str = "weir.io/public-ip";

/// The VXLAN backend's data: what a peer needs for its FDB and neighbour
/// entries (the MAC of this node's VTEP) and to check that both ends speak
/// the same VXLAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VxlanData {
    #[serde(rename = "vtepMAC")]
    pub vtep_mac: String,
    pub vni: u32,
    pub port: u16,
}

/// A node's published backend, as read from its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    HostGw { public_ip: IpAddr },
    Vxlan { public_ip: IpAddr, vtep_mac: [u8; 6], vni: u32, port: u16 },
}

/// What is wrong with a node's annotations: the annotation and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAnnotation {
    pub annotation: &'static str,
    pub message: String,
}

impl std::fmt::Display for BadAnnotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "annotation {}: {}", self.annotation, self.message)
    }
}

fn bad(annotation: &'static str, message: impl Into<String>) -> BadAnnotation {
    BadAnnotation { annotation, message: message.into() }
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    weir_common::netlink::mac_string(mac)
}

/// `aa:bb:cc:dd:ee:ff` (case-insensitive); a unicast MAC, not all zeros.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    (mac != [0; 6] && mac[0] & 1 == 0).then_some(mac)
}

/// The annotations this node publishes.
pub fn format(published: &Published) -> BTreeMap<String, String> {
    let (kind, data, ip) = match published {
        Published::HostGw { public_ip } => ("host-gw", "{}".to_string(), public_ip),
        Published::Vxlan { public_ip, vtep_mac, vni, port } => {
            let data = VxlanData { vtep_mac: format_mac(vtep_mac), vni: *vni, port: *port };
            ("vxlan", serde_json::to_string(&data).expect("always serializes"), public_ip)
        }
    };
    BTreeMap::from([
        (BACKEND_TYPE.to_string(), kind.to_string()),
        (BACKEND_DATA.to_string(), data),
        (PUBLIC_IP.to_string(), ip.to_string()),
    ])
}

/// Read a node's backend annotations. `Ok(None)`: it has published nothing
/// yet (its agent has not run). Anything present but wrong is an error
/// naming the annotation.
pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> Result<Option<Published>, BadAnnotation> {
    let Some(a) = annotations else {
        return Ok(None);
    };
    let Some(kind) = a.get(BACKEND_TYPE) else {
        return match a.keys().find(|k| *k == BACKEND_DATA || *k == PUBLIC_IP) {
            Some(_) => Err(bad(BACKEND_TYPE, "missing while the other weir.io/ backend annotations are set")),
            None => Ok(None),
        };
    };
    let ip_text = a.get(PUBLIC_IP).ok_or_else(|| bad(PUBLIC_IP, "missing"))?;
    let public_ip: IpAddr = ip_text.parse().map_err(|_| bad(PUBLIC_IP, format!("{ip_text:?} is not an IP address")))?;
    if public_ip.is_unspecified() || public_ip.is_multicast() || public_ip.is_loopback() {
        return Err(bad(PUBLIC_IP, format!("{public_ip} cannot be a node's underlay address")));
    }
    let data = a.get(BACKEND_DATA).map(String::as_str).unwrap_or("");
    match kind.as_str() {
        "host-gw" => Ok(Some(Published::HostGw { public_ip })),
        "vxlan" => {
            let d: VxlanData = serde_json::from_str(data).map_err(|e| {
                bad(
                    BACKEND_DATA,
                    format!("{data:?} is not {{\"vtepMAC\": \"aa:bb:cc:dd:ee:ff\", \"vni\": N, \"port\": N}}: {e}"),
                )
            })?;
            let vtep_mac = parse_mac(&d.vtep_mac)
                .ok_or_else(|| bad(BACKEND_DATA, format!("vtepMAC {:?} is not a unicast MAC address", d.vtep_mac)))?;
            if d.vni == 0 || d.vni >= 1 << 24 {
                return Err(bad(BACKEND_DATA, format!("vni {} is outside 1..16777215", d.vni)));
            }
            if d.port == 0 {
                return Err(bad(BACKEND_DATA, "port 0 is not a UDP port"));
            }
            Ok(Some(Published::Vxlan { public_ip, vtep_mac, vni: d.vni, port: d.port }))
        }
        other => Err(bad(BACKEND_TYPE, format!("{other:?} is not a backend (vxlan, host-gw)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn formats_and_parses_back() {
        for p in [
            Published::HostGw { public_ip: "192.0.2.7".parse().unwrap() },
            Published::Vxlan {
                public_ip: "2001:db8::7".parse().unwrap(),
                vtep_mac: [0x0a, 0xbb, 0, 1, 2, 0xff],
                vni: 1,
                port: 8472,
            },
        ] {
            let a = format(&p);
            assert_eq!(parse(Some(&a)).unwrap(), Some(p));
        }
        let a = format(&Published::Vxlan {
            public_ip: "192.0.2.7".parse().unwrap(),
            vtep_mac: [2, 0, 0, 0, 0, 1],
            vni: 1,
            port: 8472,
        });
        assert_eq!(a[BACKEND_DATA], r#"{"vtepMAC":"02:00:00:00:00:01","vni":1,"port":8472}"#);
        assert_eq!(a[BACKEND_TYPE], "vxlan");
    }

    #[test]
    fn nothing_published_is_not_an_error() {
        assert_eq!(parse(None).unwrap(), None);
        assert_eq!(parse(Some(&map(&[("other.io/x", "y")]))).unwrap(), None);
    }

    #[test]
    fn bad_annotations_name_the_annotation() {
        let ok_data = r#"{"vtepMAC":"02:00:00:00:00:01","vni":1,"port":8472}"#;
        for (pairs, annotation, want) in [
            (vec![(BACKEND_TYPE, "ipip"), (PUBLIC_IP, "192.0.2.1")], BACKEND_TYPE, "not a backend"),
            (vec![(PUBLIC_IP, "192.0.2.1")], BACKEND_TYPE, "missing"),
            (vec![(BACKEND_TYPE, "vxlan"), (BACKEND_DATA, ok_data)], PUBLIC_IP, "missing"),
            (vec![(BACKEND_TYPE, "vxlan"), (BACKEND_DATA, ok_data), (PUBLIC_IP, "node-1")], PUBLIC_IP, "not an IP"),
            (vec![(BACKEND_TYPE, "vxlan"), (BACKEND_DATA, ok_data), (PUBLIC_IP, "0.0.0.0")], PUBLIC_IP, "cannot be"),
            (vec![(BACKEND_TYPE, "vxlan"), (BACKEND_DATA, "{"), (PUBLIC_IP, "192.0.2.1")], BACKEND_DATA, "vtepMAC"),
            (vec![(BACKEND_TYPE, "vxlan"), (PUBLIC_IP, "192.0.2.1")], BACKEND_DATA, "is not"),
            (
                vec![
                    (BACKEND_TYPE, "vxlan"),
                    (BACKEND_DATA, r#"{"vtepMAC":"01:00:00:00:00:01","vni":1,"port":8472}"#),
                    (PUBLIC_IP, "192.0.2.1"),
                ],
                BACKEND_DATA,
                "unicast",
            ),
            (
                vec![
                    (BACKEND_TYPE, "vxlan"),
                    (BACKEND_DATA, r#"{"vtepMAC":"02:00:00:00:00:01","vni":16777216,"port":8472}"#),
                    (PUBLIC_IP, "192.0.2.1"),
                ],
                BACKEND_DATA,
                "vni",
            ),
        ] {
            let e = parse(Some(&map(&pairs))).unwrap_err();
            assert_eq!(e.annotation, annotation, "{pairs:?}: {e}");
            assert!(e.message.contains(want), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn sources_keep_a_nodes_weir_annotations_and_nothing_else() {
        use crate::source::Object;
        use k8s_openapi::api::core::v1::{Node, Pod};
        let all = map(&[(BACKEND_TYPE, "vxlan"), ("kubectl.kubernetes.io/last-applied-configuration", "{}")]);
        let mut node = Node::default();
        node.metadata.annotations = Some(all.clone());
        let mut o = Object::Node(node);
        o.trim();
        let Object::Node(node) = o else { unreachable!() };
        assert_eq!(node.metadata.annotations, Some(map(&[(BACKEND_TYPE, "vxlan")])));
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(all);
        let mut o = Object::Pod(pod);
        o.trim();
        let Object::Pod(pod) = o else { unreachable!() };
        assert_eq!(pod.metadata.annotations, None);
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("0A:bb:00:01:02:ff"), Some([0x0a, 0xbb, 0, 1, 2, 0xff]));
        for bad in [
            "",
            "00:00:00:00:00:00",
            "ff:ff:ff:ff:ff:ff",
            "0a:bb:00:01:02",
            "0a:bb:00:01:02:fff",
            "0a-bb-00-01-02-ff",
            "zz:bb:00:01:02:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
