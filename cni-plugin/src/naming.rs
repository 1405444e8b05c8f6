//! Names derived from what every command is given (container ID and
//! interface name), so DEL, CHECK and GC find host-side state with nothing
//! but the CNI environment.

/// FNV-1a, 64 bit: stable across releases and platforms (unlike std's
/// hasher), which is all a name needs.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0x1f; // unit separator, so ("ab","c") != ("a","bc")
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Host-side veth: "weir" + 11 hex digits (44 bits) = 15 characters, the
/// kernel's limit.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    format!("weir{:011x}", fnv1a(&[container_id, ifname]) >> 20)
}

pub const HOST_VETH_PREFIX: &str = "weir";

/// A locally administered unicast MAC for a bridge, stable per name.
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    let h = fnv1a(&["bridge", bridge]).to_be_bytes();
    [0x02 | (h[0] & 0xfc), h[1], h[2], h[3], h[4], h[5]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_and_fit() {
        let a = host_veth("abc", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("weir"));
        assert_eq!(a, host_veth("abc", "eth0"));
        assert_ne!(a, host_veth("abc", "eth1"));
        assert_ne!(host_veth("ab", "ceth0"), host_veth("abc", "eth0"));
        let m = bridge_mac("cni0");
        assert_eq!(m[0] & 0x03, 0x02);
    }
}
