//! Ports and protocols: range splitting into the aligned blocks the policy
//! LPM trie stores, and protocol names.

/// Port ranges become the aligned blocks the policy LPM trie stores; the
/// dataplane crate owns that encoding.
pub use weir_bpf::policy::{port_range_blocks as port_blocks, PortBlock};

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// The protocol number of a NetworkPolicy / container port protocol name;
/// absent means TCP, as the API server defaults it. Names are
/// case-sensitive, as the API validates them.
pub fn protocol_number(name: Option<&str>) -> Option<u8> {
    match name {
        None | Some("TCP") => Some(PROTO_TCP),
        Some("UDP") => Some(PROTO_UDP),
        Some("SCTP") => Some(PROTO_SCTP),
        _ => None,
    }
}

/// IANA service name rules the API server applies to named ports: 1-15
/// characters of [a-z0-9-], at least one letter, no leading/trailing or
/// doubled hyphen.
pub fn valid_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_default_to_tcp_and_are_case_sensitive() {
        assert_eq!(protocol_number(None), Some(6));
        assert_eq!(protocol_number(Some("UDP")), Some(17));
        assert_eq!(protocol_number(Some("SCTP")), Some(132));
        assert_eq!(protocol_number(Some("udp")), None);
        assert_eq!(protocol_number(Some("ICMP")), None);
    }

    #[test]
    fn port_names_follow_iana_rules() {
        assert!(valid_port_name("http"));
        assert!(valid_port_name("h2c-1"));
        assert!(!valid_port_name("80"));
        assert!(!valid_port_name("Http"));
        assert!(!valid_port_name("a--b"));
        assert!(!valid_port_name("averyveryverylongname"));
    }
}
