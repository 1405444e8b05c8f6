//! Masquerade for traffic that leaves the cluster: one shared nftables chain
//! per network (table `inet weir`), not one chain per pod as the reference
//! bridge plugin does with iptables. It is rewritten atomically (one nft
//! transaction) by every ADD with `ipMasq`, so it converges on the current
//! configuration and is idempotent; DEL leaves it, since it only matches
//! addresses of the network's own ranges and costs nothing without pods.

use crate::error::{CniError, Result};
use ipnet::IpNet;
use std::io::Write;
use std::process::{Command, Stdio};

pub const TABLE: &str = "weir";

/// Chain name for a network: nft identifiers are [A-Za-z0-9_], so other
/// characters are folded and a hash keeps distinct names distinct.
pub fn chain_name(network: &str) -> String {
    let clean: String = network.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).take(40).collect();
    let h = crate::naming::host_veth(network, "masq");
    format!("masq_{clean}_{}", &h[4..10])
}

/// The nft script for the pod `sources` (network prefixes) that must not be
/// masqueraded towards `cluster` (plus the sources themselves and multicast).
pub fn script(network: &str, sources: &[IpNet], cluster: &[IpNet]) -> String {
    let chain = chain_name(network);
    let mut s = format!(
        "table inet {TABLE} {{\n  chain {chain} {{\n    type nat hook postrouting priority srcnat; policy accept;\n  }}\n}}\nflush chain inet {TABLE} {chain}\n"
    );
    for v4 in [true, false] {
        let src: Vec<IpNet> = IpNet::aggregate(&sources.iter().filter(|n| n.addr().is_ipv4() == v4).cloned().collect());
        if src.is_empty() {
            continue;
        }
        let mut keep: Vec<IpNet> = cluster.iter().chain(sources).filter(|n| n.addr().is_ipv4() == v4).cloned().collect();
        keep.push(if v4 { "224.0.0.0/4".parse().unwrap() } else { "ff00::/8".parse().unwrap() });
        let keep = IpNet::aggregate(&keep);
        let fam = if v4 { "ip" } else { "ip6" };
        let join = |v: &[IpNet]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
        s.push_str(&format!(
            "add rule inet {TABLE} {chain} {fam} saddr {{ {} }} {fam} daddr != {{ {} }} masquerade\n",
            join(&src),
            join(&keep)
        ));
    }
    s
}

pub fn apply(network: &str, sources: &[IpNet], cluster: &[IpNet]) -> Result<()> {
    let body = script(network, sources, cluster);
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::kernel("ipMasq: cannot run nft (install the nftables package)", e))?;
    child.stdin.take().expect("piped").write_all(body.as_bytes()).map_err(|e| CniError::kernel("ipMasq: writing to nft", e))?;
    let out = child.wait_with_output().map_err(|e| CniError::kernel("ipMasq: waiting for nft", e))?;
    if !out.status.success() {
        return Err(CniError::kernel(
            "ipMasq: nft rejected the masquerade rules",
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_merges_overlapping_exclusions() {
        let s = script("k8s-pod-network", &["10.244.1.0/24".parse().unwrap(), "fd00:1::/64".parse().unwrap()], &["10.244.0.0/16".parse().unwrap()]);
        assert!(s.contains("ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade"), "{s}");
        assert!(s.contains("ip6 saddr { fd00:1::/64 } ip6 daddr != { fd00:1::/64, ff00::/8 } masquerade"), "{s}");
        assert!(s.contains("flush chain inet weir masq_k8s_pod_network_"), "{s}");
    }
}
