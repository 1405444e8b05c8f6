//! Fails when bpf/include/weir_abi.h and the Rust mirrors in `weir_bpf::abi`
//! disagree: every size and field offset/size, and every constant, is
//! generated from the Rust side as a C `_Static_assert` and compiled by
//! clang against the header.

use std::fmt::Write as _;
use std::mem::{offset_of, size_of};
use std::process::Command;
use weir_bpf::abi::*;

/// Rust field size without an instance.
fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! check_struct {
    ($out:expr, $rust:ty => $c:literal, lpm = $lpm:expr, { $($f:ident),+ $(,)? }) => {{
        // LPM keys: the C struct leads with __u32 prefixlen that aya's Key adds.
        let shift: usize = if $lpm { 4 } else { 0 };
        writeln!($out, "_Static_assert(sizeof(struct {}) == {}, \"size of {} (Rust {})\");",
            $c, size_of::<$rust>() + shift, $c, stringify!($rust)).unwrap();
        let mut sum = shift;
        $(
            let fs = field_size(|x: &$rust| &x.$f);
            sum += fs;
            writeln!($out, "_Static_assert(offsetof(struct {}, {}) == {}, \"offset of {}.{}\");",
                $c, stringify!($f), offset_of!($rust, $f) + shift, $c, stringify!($f)).unwrap();
            writeln!($out, "_Static_assert(sizeof(((struct {} *)0)->{}) == {}, \"size of {}.{}\");",
                $c, stringify!($f), fs, $c, stringify!($f)).unwrap();
        )+
        // no implicit padding: the fields add up to the whole
        assert_eq!(sum, size_of::<$rust>() + shift, "{} has implicit padding or a field missing from this list", stringify!($rust));
    }};
}

macro_rules! check_consts {
    ($out:expr, $($rust:ident => $c:literal),+ $(,)?) => {
        $( writeln!($out, "_Static_assert({} == {}ull, \"{}\");", $c, $rust as u64, $c).unwrap(); )+
    };
}

fn generate() -> String {
    let mut c = String::from("#include <stddef.h>\n#include \"weir_abi.h\"\n");
    check_struct!(c, IpcacheKey => "weir_ipcache_key", lpm = true, { addr });
    check_struct!(c, IpcacheValue => "weir_ipcache_value", lpm = false, { identity, endpoint, flags, pad });
    check_struct!(c, Endpoint => "weir_endpoint", lpm = false, {
        identity, flags, revision, mac, ipv4_prefixlen, pad, ipv4, ipv6, ipv6_ll
    });
    check_struct!(c, PolicyKey => "weir_policy_key", lpm = true, { endpoint, identity, direction, protocol, port });
    check_struct!(c, TierVerdict => "weir_tier_verdict", lpm = false, { rank, rule });
    check_struct!(c, PolicyValue => "weir_policy_value", lpm = false, { rule, verdict, pad, admin, baseline });
    check_struct!(c, CidrKey => "weir_cidr_key", lpm = true, { endpoint, direction, pad, addr });
    check_struct!(c, CidrValue => "weir_cidr_value", lpm = false, { identity });
    check_struct!(c, CtKey => "weir_ct_key", lpm = false, { saddr, daddr, sport, dport, protocol, pad });
    check_struct!(c, CtValue => "weir_ct_value", lpm = false, { expires_ns, egress_ep, ingress_ep, rule, flags, policy_gen, pad });
    check_struct!(c, ServiceOpenKey => "weir_service_open_key", lpm = false, { saddr, sport, protocol, pad });
    check_struct!(c, ServiceOpen => "weir_service_open", lpm = false, { opened_ns, vaddr, vport, flags, pad });
    check_struct!(c, ServiceBackend => "weir_service_backend", lpm = false, { baddr, bport, pad });
    check_struct!(c, Event => "weir_event", lpm = false, {
        ts_ns, endpoint, peer_identity, rule, saddr, daddr, sport, dport, protocol, direction, reason, flags, pad
    });
    check_struct!(c, CounterKey => "weir_counter_key", lpm = false, { endpoint, direction, reason, pad });
    check_struct!(c, CounterValue => "weir_counter_value", lpm = false, { packets, bytes });
    check_struct!(c, Config => "weir_config", lpm = false, { flags, ct_tcp_timeout_s, ct_udp_timeout_s, ct_syn_timeout_s, policy_gen, events_per_s });
    check_struct!(c, EventBudget => "weir_event_budget", lpm = false, { window, used, limited });
    // C prefixlen fields start every LPM key
    for s in ["weir_ipcache_key", "weir_policy_key", "weir_cidr_key"] {
        writeln!(c, "_Static_assert(offsetof(struct {s}, prefixlen) == 0, \"{s}.prefixlen\");").unwrap();
    }
    check_consts!(c,
        ABI_VERSION => "WEIR_ABI_VERSION",
        ID_ANY => "WEIR_ID_ANY", ID_HOST => "WEIR_ID_HOST", ID_WORLD => "WEIR_ID_WORLD", ID_ANY_POD => "WEIR_ID_ANY_POD",
        ID_FIRST_LABEL => "WEIR_ID_FIRST_LABEL", ID_FIRST_CIDR => "WEIR_ID_FIRST_CIDR",
        IPCACHE_SERVICE => "WEIR_IPCACHE_SERVICE",
        EP_READY => "WEIR_EP_READY", EP_INGRESS_ISOLATED => "WEIR_EP_INGRESS_ISOLATED",
        EP_EGRESS_ISOLATED => "WEIR_EP_EGRESS_ISOLATED", EP_OPEN_UNTIL_READY => "WEIR_EP_OPEN_UNTIL_READY",
        EP_INGRESS_TIERED => "WEIR_EP_INGRESS_TIERED", EP_EGRESS_TIERED => "WEIR_EP_EGRESS_TIERED",
        EP_LOG_ALLOW => "WEIR_EP_LOG_ALLOW", EP_INGRESS_AUDITED => "WEIR_EP_INGRESS_AUDITED",
        EP_EGRESS_AUDITED => "WEIR_EP_EGRESS_AUDITED", R_ALLOW_AUDIT => "WEIR_R_ALLOW_AUDIT",
        R_ALLOW_MLD => "WEIR_R_ALLOW_MLD",
        EVENT_SOURCE_AUDIT => "WEIR_EVENT_SOURCE_AUDIT",
        COUNT_EVENT_LOST => "WEIR_COUNT_EVENT_LOST",
        TIER_DENY => "WEIR_TIER_DENY", TIER_PASS => "WEIR_TIER_PASS", TIER_ACCEPT => "WEIR_TIER_ACCEPT",
        TIER_NONE => "WEIR_TIER_NONE", R_ALLOW_CLUSTER_POLICY => "WEIR_R_ALLOW_CLUSTER_POLICY",
        R_DROP_CLUSTER_POLICY => "WEIR_R_DROP_CLUSTER_POLICY",
        DIR_INGRESS => "WEIR_DIR_INGRESS", DIR_EGRESS => "WEIR_DIR_EGRESS",
        POLICY_FIXED_BITS => "WEIR_POLICY_FIXED_BITS", VERDICT_ALLOW => "WEIR_VERDICT_ALLOW",
        CIDR_FIXED_BITS => "WEIR_CIDR_FIXED_BITS",
        CT_SEEN_REPLY => "WEIR_CT_SEEN_REPLY", CT_FIN_FWD => "WEIR_CT_FIN_FWD", CT_FIN_REV => "WEIR_CT_FIN_REV",
        CT_RST => "WEIR_CT_RST", CT_SERVICE => "WEIR_CT_SERVICE", CT_ORIG_SWAPPED => "WEIR_CT_ORIG_SWAPPED",
        CT_REVOKED => "WEIR_CT_REVOKED",
        R_ALLOW_UNISOLATED => "WEIR_R_ALLOW_UNISOLATED", R_ALLOW_POLICY => "WEIR_R_ALLOW_POLICY",
        R_ALLOW_ESTABLISHED => "WEIR_R_ALLOW_ESTABLISHED", R_ALLOW_REPLY => "WEIR_R_ALLOW_REPLY",
        R_ALLOW_HOST => "WEIR_R_ALLOW_HOST", R_ALLOW_DEFERRED => "WEIR_R_ALLOW_DEFERRED",
        R_ALLOW_NOT_IP => "WEIR_R_ALLOW_NOT_IP", R_ALLOW_ND => "WEIR_R_ALLOW_ND",
        R_ALLOW_RELATED => "WEIR_R_ALLOW_RELATED", R_ALLOW_OPEN_UNTIL_READY => "WEIR_R_ALLOW_OPEN_UNTIL_READY",
        R_DROP_POLICY => "WEIR_R_DROP_POLICY", R_DROP_NOT_READY => "WEIR_R_DROP_NOT_READY",
        R_DROP_MALFORMED => "WEIR_R_DROP_MALFORMED", R_DROP_FRAGMENT => "WEIR_R_DROP_FRAGMENT",
        R_DROP_NO_ENDPOINT => "WEIR_R_DROP_NO_ENDPOINT", R_DROP_CT_FULL => "WEIR_R_DROP_CT_FULL",
        R_DROP_VLAN => "WEIR_R_DROP_VLAN", R_DROP_SPOOFED => "WEIR_R_DROP_SPOOFED",
        R_DROP_SPOOFED_MAC => "WEIR_R_DROP_SPOOFED_MAC", R_DROP_NEIGH_SPOOFED => "WEIR_R_DROP_NEIGH_SPOOFED",
        R_DROP_ROUTER_MSG => "WEIR_R_DROP_ROUTER_MSG", R_DROP_NOT_FOR_POD => "WEIR_R_DROP_NOT_FOR_POD",
        R_DROP_POLICY_REVOKED => "WEIR_R_DROP_POLICY_REVOKED",
        REASON_MAX => "WEIR_REASON_MAX",
        CFG_EVENTS_ALLOW => "WEIR_CFG_EVENTS_ALLOW", CFG_REJUDGE_OFF => "WEIR_CFG_REJUDGE_OFF",
        CFG_EVENTS_OFF => "WEIR_CFG_EVENTS_OFF",
        CT_TCP_TIMEOUT_DEFAULT_S => "WEIR_CT_TCP_TIMEOUT_DEFAULT_S",
        CT_UDP_TIMEOUT_DEFAULT_S => "WEIR_CT_UDP_TIMEOUT_DEFAULT_S",
        CT_SYN_TIMEOUT_DEFAULT_S => "WEIR_CT_SYN_TIMEOUT_DEFAULT_S",
        CT_REFRESH_NS => "WEIR_CT_REFRESH_NS",
        IPCACHE_MAX => "WEIR_IPCACHE_MAX", ENDPOINTS_MAX => "WEIR_ENDPOINTS_MAX",
        POLICY_MAX => "WEIR_POLICY_MAX", CIDR_MAX => "WEIR_CIDR_MAX", CT_MAX => "WEIR_CT_MAX",
        EVENTS_BYTES => "WEIR_EVENTS_BYTES", COUNTERS_MAX => "WEIR_COUNTERS_MAX",
        RULE_COUNTERS_MAX => "WEIR_RULE_COUNTERS_MAX",
        SERVICE_OPENS_MAX => "WEIR_SERVICE_OPENS_MAX", SERVICE_BACKENDS_MAX => "WEIR_SERVICE_BACKENDS_MAX",
        SERVICE_OPEN_AMBIGUOUS => "WEIR_SERVICE_OPEN_AMBIGUOUS",
        SERVICE_OPEN_WINDOW_NS => "WEIR_SERVICE_OPEN_WINDOW_NS",
    );
    // the full-length prefix of a policy key is its data size in bits
    writeln!(c, "_Static_assert(sizeof(struct weir_policy_key) * 8 - 32 == {POLICY_FULL_BITS}, \"POLICY_FULL_BITS\");")
        .unwrap();
    for (rust, cname) in [
        (MAP_IPCACHE, "WEIR_MAP_IPCACHE"),
        (MAP_ENDPOINTS, "WEIR_MAP_ENDPOINTS"),
        (MAP_POLICY, "WEIR_MAP_POLICY"),
        (MAP_IPCACHE_EXACT, "WEIR_MAP_IPCACHE_EXACT"),
        (MAP_POLICY_EXACT, "WEIR_MAP_POLICY_EXACT"),
        (MAP_CIDR, "WEIR_MAP_CIDR"),
        (MAP_CT, "WEIR_MAP_CT"),
        (MAP_EVENTS, "WEIR_MAP_EVENTS"),
        (MAP_COUNTERS, "WEIR_MAP_COUNTERS"),
        (MAP_RULE_COUNTERS, "WEIR_MAP_RULE_COUNTERS"),
        (MAP_EVENT_BUDGET, "WEIR_MAP_EVENT_BUDGET"),
        (MAP_CONFIG, "WEIR_MAP_CONFIG"),
        (MAP_ABI, "WEIR_MAP_ABI"),
        (MAP_SERVICE_OPENS, "WEIR_MAP_SERVICE_OPENS"),
        (MAP_SERVICE_BACKENDS, "WEIR_MAP_SERVICE_BACKENDS"),
        (PROG_FROM_POD, "WEIR_PROG_FROM_POD"),
        (PROG_TO_POD, "WEIR_PROG_TO_POD"),
    ] {
        writeln!(c, "_Static_assert(__builtin_strcmp({cname}, \"{rust}\") == 0, \"{cname}\");").unwrap();
    }
    // The rank encoding, at its extremes and one mixed value.
    for (p, i, a) in [(0, 0, TIER_DENY), (1000, 24, TIER_ACCEPT), (7, 3, TIER_PASS)] {
        let (rank, action) = (tier_rank(p, i, a), a);
        writeln!(c, "_Static_assert(WEIR_TIER_RANK({p}u, {i}u, {a}u) == {rank}u, \"WEIR_TIER_RANK\");").unwrap();
        writeln!(c, "_Static_assert(WEIR_TIER_ACTION({rank}u) == {action}u, \"WEIR_TIER_ACTION\");").unwrap();
    }
    // The peer wildcard, at every boundary of the label range.
    for id in [
        ID_ANY,
        ID_HOST,
        ID_WORLD,
        ID_ANY_POD,
        ID_FIRST_LABEL - 1,
        ID_FIRST_LABEL,
        ID_FIRST_CIDR - 1,
        ID_FIRST_CIDR,
        u32::MAX,
    ] {
        let w = peer_wildcard(id);
        writeln!(c, "_Static_assert(WEIR_PEER_WILDCARD({id}u) == {w}u, \"WEIR_PEER_WILDCARD({id})\");").unwrap();
    }
    c
}

#[test]
fn c_header_and_rust_mirrors_agree() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("layout.c");
    std::fs::write(&src, generate()).unwrap();
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    let out = Command::new(std::env::var("WEIR_CLANG").unwrap_or_else(|_| "clang".into()))
        .args(["-fsyntax-only", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu"])
        .arg(format!("-I{include}"))
        .arg(&src)
        .output()
        .expect("clang (apt-get install clang libbpf-dev)");
    assert!(out.status.success(), "weir_abi.h and bpf/src/abi.rs disagree:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_check_catches_a_mismatch() {
    // a deliberately wrong assertion must fail to compile, or the test above proves nothing
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bad.c");
    std::fs::write(&src, "#include \"weir_abi.h\"\n_Static_assert(sizeof(struct weir_ct_key) == 41, \"x\");\n")
        .unwrap();
    let out = Command::new("clang")
        .args(["-fsyntax-only", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu"])
        .arg(format!("-I{}", concat!(env!("CARGO_MANIFEST_DIR"), "/include")))
        .arg(&src)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
