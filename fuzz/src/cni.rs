//! The `weir` plugin's input parsers on arbitrary bytes: the network
//! configuration (and its `prevResult`), `CNI_ARGS` and the `CNI_*`
//! environment. None may panic, and what they accept must hold what the
//! rest of the plugin relies on.

use ipnet::IpNet;
use weir_cni::config::{self, Command, Ipam, NetConf, SUPPORTED_VERSIONS};
use weir_cni::result::CniResult;

/// The same bytes go to every parser: as the config on stdin, as
/// `CNI_ARGS`, and as an environment of `NAME=VALUE` lines.
pub fn run(data: &[u8]) {
    if let Ok(v) = config::parse_stdin(data) {
        let _ = config::version_key(&config::version_of(&v));
        if let Ok(conf) = config::parse_netconf(v.clone()) {
            check_netconf(&conf);
        }
        // A prevResult is read whether or not the rest of the config is valid.
        for candidate in [v.get("prevResult"), Some(&v)].into_iter().flatten() {
            if let Ok(r) = CniResult::parse(candidate, "prevResult") {
                check_result_round_trip(&r);
            }
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(args) = config::parse_cni_args(text) {
        check_cni_args(&args);
    }
    // A process environment never holds NUL bytes.
    let env = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .filter(|v| !v.contains('\0'))
            .map(String::from)
    };
    for cmd in [Command::Add, Command::Del, Command::Check, Command::Gc] {
        if let Ok(e) = config::parse_env(cmd, env) {
            if matches!(cmd, Command::Add | Command::Del | Command::Check) {
                check_container_id(&e.container_id);
                assert!(kernel_accepts_ifname(&e.ifname), "CNI_IFNAME {:?} accepted", e.ifname);
            }
        }
    }
}

/// The kernel's `dev_valid_name`: 1-15 bytes, not "." or "..", no '/',
/// ':' or whitespace; and no NUL, which netlink would cut the name at.
pub fn kernel_accepts_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace() || b == 0x0b)
}

fn check_container_id(id: &str) {
    // It names files (IPAM reservations, endpoint records) and host veths.
    assert!(!id.is_empty() && !id.contains('/') && id != "." && id != "..", "container id {id:?} accepted");
}

fn check_netconf(c: &NetConf) {
    assert!(SUPPORTED_VERSIONS.contains(&c.cni_version.as_str()), "cniVersion {:?} accepted", c.cni_version);
    // The network name is a directory name under the IPAM data dir.
    assert!(
        !c.name.is_empty() && !c.name.contains('/') && c.name != "." && c.name != "..",
        "name {:?} accepted",
        c.name
    );
    assert!(kernel_accepts_ifname(&c.bridge), "bridge {:?} accepted, the kernel refuses it", c.bridge);
    assert!(c.mtu.is_none_or(|m| (68..=65535).contains(&m)), "mtu {:?} accepted", c.mtu);
    for n in &c.cluster_cidrs {
        let _ = n.trunc();
    }
    match &c.ipam {
        Ipam::Delegate { plugin } => {
            assert!(!plugin.is_empty() && !plugin.contains('/'), "ipam.type {plugin:?} accepted")
        }
        Ipam::HostLocal(h) => {
            // Ranges left out come from the node's network file; until
            // it is there, ADD must be able to say why it has none.
            assert!(
                !h.range_sets.is_empty() || h.ranges_pending.is_some(),
                "host-local without ranges accepted, and nothing says why"
            );
            let all: Vec<_> = h.range_sets.iter().flat_map(|s| s.ranges.iter()).collect();
            for set in &h.range_sets {
                assert!(!set.ranges.is_empty(), "an empty range set accepted");
                let v4 = set.is_ipv4();
                assert!(
                    set.ranges.iter().all(|r| r.subnet.addr().is_ipv4() == v4),
                    "a range set mixing families accepted"
                );
                let _ = set.capacity();
            }
            for r in &all {
                let s = r.subnet;
                assert_eq!(s, s.trunc(), "subnet {s} with host bits accepted");
                let bits = if s.addr().is_ipv4() { 32 } else { 128 };
                assert!(s.prefix_len() + 2 <= bits, "subnet {s} too small to allocate from accepted");
                for (what, a) in [("rangeStart", r.start), ("rangeEnd", r.end), ("gateway", r.gateway)] {
                    assert!(s.contains(&a), "{what} {a} outside {s} accepted");
                }
                assert!(
                    weir_cni::ip::to_u128(r.start) <= weir_cni::ip::to_u128(r.end),
                    "rangeStart {} after rangeEnd {} accepted",
                    r.start,
                    r.end
                );
                assert!(r.capacity() <= weir_cni::ip::to_u128(r.end) - weir_cni::ip::to_u128(r.start) + 1);
                let _ = (r.with_prefix(r.start), r.with_prefix(r.end), r.with_prefix(r.gateway));
            }
            for (i, a) in all.iter().enumerate() {
                for b in &all[i + 1..] {
                    assert!(!a.overlaps(b), "overlapping ranges {} and {} accepted", a.subnet, b.subnet);
                }
            }
            for rt in &h.routes {
                assert_eq!(rt.dst, rt.dst.trunc());
                assert!(
                    rt.gw.is_none_or(|g| g.is_ipv4() == rt.dst.addr().is_ipv4()),
                    "route {rt:?} mixing families accepted"
                );
            }
        }
    }
    if let Some(p) = &c.prev_result {
        let _ = CniResult::parse(p, "prevResult");
    }
}

/// What a result parses to survives being written in any version's layout
/// and read back (less what an older layout has no field for).
fn check_result_round_trip(r: &CniResult) {
    for v in SUPPORTED_VERSIONS {
        let back = CniResult::parse(&r.to_json(v), "result").expect("a result we wrote reads back");
        let mut want = r.clone();
        if config::version_key(v) < (1, 1, 0) {
            want.interfaces.iter_mut().for_each(|i| i.mtu = None);
        }
        if want.dns.is_null() {
            want.dns = serde_json::json!({});
        }
        assert_eq!(back, want, "result changed through version {v}");
    }
    for ip in &r.ips {
        let _: IpNet = ip.address;
    }
}

fn check_cni_args(args: &[(String, String)]) {
    // Written back, the pairs read the same.
    let joined: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let again = config::parse_cni_args(&joined.join(";")).expect("re-joined CNI_ARGS parse");
    assert_eq!(again, args);
    for (k, v) in args {
        assert!(!k.contains('=') && !k.contains(';') && !v.contains(';'), "pair {k:?}={v:?}");
    }
}
