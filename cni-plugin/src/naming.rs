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

/// The attachment a host veth serves, written in its alias at ADD. The
/// veth's name is a 44-bit hash, so DEL and GC read the alias before they
/// touch a veth: never another attachment's, never another network's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

/// What a host veth's alias says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VethLabel {
    /// Serving this attachment (alias `weir/<network>/<containerID>/<ifname>`).
    Live(String),
    /// Taken down by DEL of this attachment, deleted in the background.
    Retired(String),
    /// Retired by a release that did not say whose it was.
    RetiredUnlabelled,
    /// Created by a release that did not label its veths.
    Unlabelled,
    /// Someone else's alias: not Weir's to touch.
    Foreign,
}

const LIVE_PREFIX: &str = "weir/";
const RETIRED_PREFIX: &str = "weir-deleting/";
/// What releases before the labels wrote on a retired veth.
const LEGACY_RETIRED: &str = "weir: deleting";

/// A part of the label, shortened to a hash when long, so the whole alias
/// stays under the kernel's 255 bytes (IFALIASZ) whatever the names are.
fn label_part(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        format!("#{:016x}", fnv1a(&[s]))
    }
}

impl Attachment<'_> {
    /// `<network>/<containerID>/<ifname>`: none of the three can hold `/`
    /// (config and environment checks), so the label is unambiguous.
    fn label(&self) -> String {
        format!("{}/{}/{}", label_part(self.network, 64), label_part(self.container_id, 128), self.ifname)
    }

    pub fn live_alias(&self) -> String {
        format!("{LIVE_PREFIX}{}", self.label())
    }

    pub fn retired_alias(&self) -> String {
        format!("{RETIRED_PREFIX}{}", self.label())
    }

    /// The label of `network` as it stands in an alias.
    pub fn network_label(network: &str) -> String {
        label_part(network, 64)
    }
}

impl VethLabel {
    pub fn of(alias: Option<&str>) -> VethLabel {
        match alias {
            None | Some("") => VethLabel::Unlabelled,
            Some(LEGACY_RETIRED) => VethLabel::RetiredUnlabelled,
            Some(a) => {
                if let Some(l) = a.strip_prefix(LIVE_PREFIX) {
                    VethLabel::Live(l.to_string())
                } else if let Some(l) = a.strip_prefix(RETIRED_PREFIX) {
                    VethLabel::Retired(l.to_string())
                } else {
                    VethLabel::Foreign
                }
            }
        }
    }

    /// Whether the label names `a` (live or retired).
    pub fn names(&self, a: &Attachment) -> bool {
        matches!(self, VethLabel::Live(l) | VethLabel::Retired(l) if *l == a.label())
    }

    /// Whether the label names an attachment of `network`.
    pub fn network_is(&self, network: &str) -> bool {
        let want = format!("{}/", Attachment::network_label(network));
        matches!(self, VethLabel::Live(l) | VethLabel::Retired(l) if l.starts_with(&want))
    }
}

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

    #[test]
    fn veth_labels_name_exactly_one_attachment_of_one_network() {
        let a = Attachment { network: "weir", container_id: "wpq_r", ifname: "eth0" };
        let b = Attachment { network: "weir", container_id: "wpq", ifname: "r_eth0" };
        let other_net = Attachment { network: "weir2", ..a.clone() };
        let live = VethLabel::of(Some(&a.live_alias()));
        assert!(live.names(&a) && !live.names(&b) && !live.names(&other_net));
        assert!(live.network_is("weir") && !live.network_is("weir2") && !live.network_is("wei"));
        let retired = VethLabel::of(Some(&a.retired_alias()));
        assert!(matches!(retired, VethLabel::Retired(_)) && retired.names(&a) && !retired.names(&b));
        assert_eq!(VethLabel::of(None), VethLabel::Unlabelled);
        assert_eq!(VethLabel::of(Some("weir: deleting")), VethLabel::RetiredUnlabelled);
        assert_eq!(VethLabel::of(Some("uplink to rack 4")), VethLabel::Foreign);
    }

    #[test]
    fn long_names_keep_the_alias_within_the_kernel_limit() {
        let net = "n".repeat(300);
        let id = "c".repeat(300);
        let a = Attachment { network: &net, container_id: &id, ifname: "eth0123456789ab" };
        assert!(a.retired_alias().len() <= 255, "{}", a.retired_alias().len());
        let l = VethLabel::of(Some(&a.live_alias()));
        assert!(l.names(&a) && l.network_is(&net) && !l.network_is("n"));
        let other = "c".repeat(299);
        assert!(!l.names(&Attachment { container_id: &other, ..a.clone() }));
    }
}
