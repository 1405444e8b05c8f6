//! A Node's pod CIDRs and addresses, read and checked: what every backend
//! needs before it may touch a route.

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// `spec.podCIDRs`, falling back to `spec.podCIDR` (older clusters set
/// only that): network addresses, at most one per family.
pub fn pod_cidrs(node: &Node) -> Result<Vec<IpNet>, String> {
    let spec = node.spec.as_ref();
    let listed: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()).filter(|v| !v.is_empty()) {
        Some(v) => v.iter().collect(),
        None => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    if listed.is_empty() {
        return Err("spec.podCIDRs: no pod CIDR (run kube-controller-manager with --allocate-node-cidrs=true and \
                    --cluster-cidr, or set the Node's spec.podCIDR)"
            .into());
    }
    let mut out: Vec<IpNet> = Vec::new();
    for text in listed {
        let c: IpNet = text.trim().parse().map_err(|_| format!("spec.podCIDRs: {text:?} is not a CIDR"))?;
        if c.trunc() != c {
            return Err(format!("spec.podCIDRs: {c} has host bits set (write {})", c.trunc()));
        }
        let bits = if c.addr().is_ipv4() { 32 } else { 128 };
        if c.prefix_len() + 2 > bits {
            return Err(format!("spec.podCIDRs: {c} is too small for a gateway and a pod"));
        }
        if out.iter().any(|o| o.addr().is_ipv4() == c.addr().is_ipv4()) {
            return Err(format!(
                "spec.podCIDRs: more than one {} CIDR",
                if c.addr().is_ipv4() { "IPv4" } else { "IPv6" }
            ));
        }
        out.push(c);
    }
    Ok(out)
}

/// `status.addresses` of type InternalIP that parse, in order.
pub fn internal_ips(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.trim().parse().ok())
        .collect()
}

/// The first InternalIP of a family.
pub fn internal_ip(node: &Node, v4: bool) -> Option<IpAddr> {
    internal_ips(node).into_iter().find(|a| a.is_ipv4() == v4)
}

/// Pairs of nodes whose pod CIDRs overlap (each pair once, names sorted).
/// Two prefixes either nest or are disjoint, so a sweep in address order
/// keeps the prefixes still open as a stack of nested ones: each CIDR
/// overlaps exactly the stack it lands on (at most 128 deep).
pub fn overlaps(cidrs: &BTreeMap<String, Vec<IpNet>>) -> Vec<(String, String)> {
    let mut all: Vec<(IpNet, &str)> =
        cidrs.iter().flat_map(|(n, cs)| cs.iter().map(move |c| (*c, n.as_str()))).collect();
    all.sort_by_key(|(c, _)| (c.addr().is_ipv6(), c.network(), c.prefix_len()));
    let mut pairs = std::collections::BTreeSet::new();
    let mut open: Vec<(IpNet, &str)> = Vec::new();
    for (c, n) in all {
        while open.last().is_some_and(|(o, _)| o.addr().is_ipv4() != c.addr().is_ipv4() || !o.contains(&c.network())) {
            open.pop();
        }
        for (_, on) in &open {
            if *on != n {
                let (a, b) = if *on < n { (*on, n) } else { (n, *on) };
                pairs.insert((a.to_string(), b.to_string()));
            }
        }
        open.push((c, n));
    }
    pairs.into_iter().collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    pub fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.spec =
            Some(NodeSpec { pod_cidrs: Some(cidrs.iter().map(|s| s.to_string()).collect()), ..Default::default() });
        n.status = Some(NodeStatus {
            addresses: Some(
                ips.iter().map(|a| NodeAddress { type_: "InternalIP".into(), address: a.to_string() }).collect(),
            ),
            ..Default::default()
        });
        n
    }

    #[test]
    fn pod_cidrs_prefer_the_list_and_fall_back_to_the_single_field() {
        let n = node("a", &["10.1.0.0/24", "fd00:1::/64"], &[]);
        assert_eq!(
            pod_cidrs(&n).unwrap(),
            vec!["10.1.0.0/24".parse().unwrap(), "fd00:1::/64".parse::<IpNet>().unwrap()]
        );
        let mut n = node("a", &[], &[]);
        n.spec.as_mut().unwrap().pod_cidr = Some("10.2.0.0/24".into());
        assert_eq!(pod_cidrs(&n).unwrap(), vec!["10.2.0.0/24".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn bad_pod_cidrs_name_the_field_and_the_problem() {
        for (cidrs, want) in [
            (&[][..], "no pod CIDR"),
            (&["10.1.0.1/24"][..], "host bits"),
            (&["ten"][..], "not a CIDR"),
            (&["10.1.0.0/31"][..], "too small"),
            (&["10.1.0.0/24", "10.2.0.0/24"][..], "more than one IPv4"),
        ] {
            let e = pod_cidrs(&node("a", cidrs, &[])).unwrap_err();
            assert!(e.starts_with("spec.podCIDRs") && e.contains(want), "{cidrs:?}: {e}");
        }
        assert!(pod_cidrs(&Node::default()).is_err());
    }

    #[test]
    fn internal_ips_by_family() {
        let mut n = node("a", &[], &["192.0.2.1", "2001:db8::1"]);
        n.status
            .as_mut()
            .unwrap()
            .addresses
            .as_mut()
            .unwrap()
            .insert(0, NodeAddress { type_: "ExternalIP".into(), address: "198.51.100.1".into() });
        assert_eq!(internal_ip(&n, true), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(internal_ip(&n, false), Some("2001:db8::1".parse().unwrap()));
    }

    fn cidr_map(rows: &[(&str, &[&str])]) -> BTreeMap<String, Vec<IpNet>> {
        rows.iter().map(|(n, cs)| (n.to_string(), cs.iter().map(|c| c.parse().unwrap()).collect())).collect()
    }

    #[test]
    fn overlaps_name_both_nodes() {
        let m = cidr_map(&[
            ("a", &["10.1.0.0/24", "fd00:1::/64"]),
            ("b", &["10.1.0.128/25"]),
            ("c", &["10.2.0.0/24", "fd00:2::/64"]),
            ("d", &["10.0.0.0/8"]),
            ("e", &["fd00:1::/64"]),
        ]);
        assert_eq!(
            overlaps(&m),
            vec![
                ("a".into(), "b".into()),
                ("a".into(), "d".into()),
                ("a".into(), "e".into()),
                ("b".into(), "d".into()),
                ("c".into(), "d".into())
            ]
        );
        assert!(overlaps(&cidr_map(&[("a", &["10.1.0.0/24"]), ("b", &["10.1.1.0/24"]), ("c", &["0.0.0.0/0"][..0])]))
            .is_empty());
    }

    proptest::proptest! {
        /// Against the quadratic definition.
        #[test]
        fn overlaps_match_pairwise_check(rows in proptest::collection::vec((0u8..6, 0u8..4, 22u8..27), 0..12)) {
            let mut m: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
            for (node, third, len) in rows {
                let c = IpNet::new(std::net::Ipv4Addr::new(10, 0, third, 0).into(), len).unwrap().trunc();
                let v = m.entry(format!("n{node}")).or_default();
                if v.is_empty() { v.push(c); }
            }
            let mut want = std::collections::BTreeSet::new();
            for (a, ca) in &m {
                for (b, cb) in &m {
                    if a < b && ca.iter().any(|x| cb.iter().any(|y| x.contains(&y.network()) || y.contains(&x.network()))) {
                        want.insert((a.clone(), b.clone()));
                    }
                }
            }
            proptest::prop_assert_eq!(overlaps(&m), want.into_iter().collect::<Vec<_>>());
        }
    }
}
