//! Names the lab derives: netns names, container IDs, pod UIDs. Deterministic
//! where the lab must find things again after a crash (netns names), unique
//! per incarnation where a runtime would make them unique (container IDs).

/// FNV-1a 64: tiny, dependency-free and stable across releases (the names it
/// makes end up on disk, so the function must never change).
pub fn fnv64(data: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x100_0000_01b3);
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// `n` hex characters (a multiple of 16) derived from `parts`.
pub fn hex_digest(parts: &[&str], n: usize) -> String {
    let joined = parts.join("\u{0}");
    let mut out = String::new();
    let mut seed = 0u64;
    while out.len() < n {
        out.push_str(&format!("{:016x}", fnv64(joined.as_bytes(), seed)));
        seed += 1;
    }
    out.truncate(n);
    out
}

/// Lab names become netns and bpffs path components: keep them short and tame.
pub fn validate_lab_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 24 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("lab name {name:?} must be 1-24 characters of letters, digits, '-' or '_'"));
    }
    Ok(())
}

/// The node netns of lab `lab`.
pub fn node_netns(lab: &str) -> String {
    format!("weir-{lab}")
}

/// Node `node-k` of a multi-node lab. Never a pod netns of the same lab:
/// those have a '-' between two non-empty parts after `weir-<lab>-`.
pub fn multi_node_netns(lab: &str, k: usize) -> String {
    format!("weir-{lab}-n{k}")
}

/// The underlay of a multi-node lab: the bridge every node's `eth0` is on.
pub fn underlay_netns(lab: &str) -> String {
    format!("weir-{lab}-ul")
}

/// Whether `netns` is a node or the underlay of a multi-node lab `lab`:
/// finds them after a crash, when the state file no longer says how many.
pub fn is_multi_node_netns(lab: &str, netns: &str) -> bool {
    let Some(rest) = netns.strip_prefix(&format!("weir-{lab}-")) else { return false };
    rest == "ul" || rest.strip_prefix('n').is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
}

/// Longest netns name we use verbatim; longer ones are hashed so every name
/// stays readable in `ip netns` and far from NAME_MAX.
const MAX_NETNS: usize = 48;

/// The pod netns `weir-<lab>-<ns>-<pod>`, or `weir-<lab>-p<hash>` when too
/// long. The pod namespace and name are separated by `-` which both may
/// contain, so the names are only for humans: the lab finds its netns through
/// its state file, never by parsing names.
pub fn pod_netns(lab: &str, namespace: &str, pod: &str) -> String {
    let plain = format!("weir-{lab}-{namespace}-{pod}");
    let tame = plain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if plain.len() <= MAX_NETNS && tame {
        plain
    } else {
        format!("weir-{lab}-p{}", hex_digest(&[lab, namespace, pod], 16))
    }
}

/// A container ID as runtimes make them: 64 hex characters, unique per pod
/// incarnation (`uid`), so a pod deleted and re-created gets a new one.
pub fn container_id(lab: &str, namespace: &str, pod: &str, uid: &str) -> String {
    hex_digest(&["container", lab, namespace, pod, uid], 64)
}

/// An RFC 4122-shaped UID (version 4 layout) from a seed.
pub fn pod_uid(seed: &[&str]) -> String {
    let h = hex_digest(seed, 32);
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

/// A fresh seed: time + pid, so UIDs differ between incarnations.
pub fn fresh_seed() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{now}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_stable_and_sized() {
        assert_eq!(fnv64(b"", 0), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(b"a", 0), 0xaf63_dc4c_8601_ec8c); // FNV-1a reference value
        let d = hex_digest(&["a", "b"], 40);
        assert_eq!(d.len(), 40);
        assert_eq!(d, hex_digest(&["a", "b"], 40));
        assert_ne!(d, hex_digest(&["ab"], 40), "parts are separated");
    }

    #[test]
    fn netns_names() {
        assert_eq!(node_netns("default"), "weir-default");
        assert_eq!(pod_netns("default", "x", "a"), "weir-default-x-a");
        let long = pod_netns("default", "a-very-long-namespace-name", "and-a-long-pod-name");
        assert!(long.starts_with("weir-default-p") && long.len() == "weir-default-p".len() + 16, "{long}");
        assert_ne!(long, pod_netns("default", "a-very-long-namespace-name", "and-a-long-pod-name2"));
        // dots are legal in pod names and in netns names, but slashes never reach here
        assert_eq!(pod_netns("l", "x", "a.b"), "weir-l-x-a.b");
        assert_eq!(multi_node_netns("l", 12), "weir-l-n12");
        assert!(is_multi_node_netns("l", "weir-l-n12") && is_multi_node_netns("l", &underlay_netns("l")));
        // pod netns of the same lab, the single node, other labs: not ours
        for other in
            ["weir-l", "weir-l-n-1", "weir-l-n", "weir-l-nx", "weir-l-x-n1", "weir-m-n1", &pod_netns("l", "n", "1")]
        {
            assert!(!is_multi_node_netns("l", other), "{other}");
        }
    }

    #[test]
    fn container_ids_are_runtime_shaped_and_unique_per_uid() {
        let a = container_id("l", "x", "a", "u1");
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, container_id("l", "x", "a", "u2"));
        assert_ne!(a, container_id("m", "x", "a", "u1"));
    }

    #[test]
    fn uid_shape() {
        let u = pod_uid(&["s"]);
        assert_eq!(u.len(), 36);
        assert_eq!(u.split('-').map(|p| p.len()).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12]);
    }

    #[test]
    fn lab_names() {
        assert!(validate_lab_name("default").is_ok());
        assert!(validate_lab_name("t-123_x").is_ok());
        assert!(validate_lab_name("").is_err());
        assert!(validate_lab_name("a/b").is_err());
        assert!(validate_lab_name(&"x".repeat(25)).is_err());
    }
}
