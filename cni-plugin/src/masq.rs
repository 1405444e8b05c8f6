//! Masquerade for traffic that leaves the cluster: one shared nftables chain
//! per network (table `inet weir`), not one chain per pod as the reference
//! bridge plugin does with iptables. ADD with `ipMasq` writes it atomically
//! (one nft transaction), so it converges on the current configuration and
//! is idempotent; DEL leaves it, since it only matches addresses of the
//! network's own ranges and costs nothing without pods.
//!
//! Running nft costs more than the rest of an ADD, so ADD skips it when
//! nothing can have changed: a stamp in the run directory records the
//! script last applied and the nftables ruleset generation our transaction
//! produced. Any later nftables change anywhere (iptables-nft included)
//! moves the generation and the next ADD writes the chain again.

use crate::error::{CniError, Result};
use ipnet::IpNet;
use std::io::Write;
use std::path::{Path, PathBuf};
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
        let mut keep: Vec<IpNet> =
            cluster.iter().chain(sources).filter(|n| n.addr().is_ipv4() == v4).cloned().collect();
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

/// Make the network's masquerade chain match `sources`/`cluster`, running
/// nft only when the stamp under `run_dir` cannot vouch for it.
pub fn ensure(network: &str, sources: &[IpNet], cluster: &[IpNet], run_dir: &Path) -> Result<()> {
    let body = script(network, sources, cluster);
    let stamp = stamp_path(run_dir, network);
    let scope = scope();
    let before = nft_generation().ok();
    if let (Some(gen), Some(scope)) = (before, &scope) {
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_body(scope, gen, &body).as_str()) {
            return Ok(());
        }
    }
    apply(&body)?;
    // Vouch only for our own transaction: exactly one generation later.
    match (before, nft_generation().ok(), &scope) {
        (Some(b), Some(a), Some(scope)) if a == b.wrapping_add(1) => {
            let _ = write_atomic(&stamp, stamp_body(scope, a, &body).as_bytes());
        }
        _ => {
            let _ = std::fs::remove_file(&stamp);
        }
    }
    Ok(())
}

/// How long [`remove_table`] waits for the kernel's answer.
pub const REMOVE_TABLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Remove the table, every network's chain with it, from the calling
/// thread's network namespace (`weir-policyd uninstall`; DEL never does,
/// see above). Returns whether it was there; a kernel without nf_tables
/// has none. Spoken over nf_tables netlink (one NFT_MSG_DELTABLE in a
/// batch), not through nft: the uninstall DaemonSet's image has no nft.
/// Gives up after [`REMOVE_TABLE_TIMEOUT`] without an answer.
pub fn remove_table() -> std::io::Result<bool> {
    use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
    const NFNL_MSG_BATCH_END: u16 = 0x11;
    const NFT_MSG_DELTABLE: u16 = 2;
    const NFTA_TABLE_NAME: u16 = 1;
    const NFPROTO_INET: u8 = 1;

    // nlmsghdr + nfgenmsg (family, version 0, res_id big-endian) + attributes
    fn message(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
        let len = 16 + 4 + attrs.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[family, 0]);
        m.extend_from_slice(&res_id.to_be_bytes());
        m.extend_from_slice(attrs);
        m
    }
    let mut name = TABLE.as_bytes().to_vec();
    name.push(0);
    let mut attr = Vec::new();
    attr.extend_from_slice(&((4 + name.len()) as u16).to_ne_bytes());
    attr.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
    attr.extend_from_slice(&name);
    attr.resize(attr.len().div_ceil(4) * 4, 0);

    let request = libc::NLM_F_REQUEST as u16;
    let mut batch = message(NFNL_MSG_BATCH_BEGIN, request, 1, 0, NFNL_SUBSYS_NFTABLES, &[]);
    let del = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE;
    batch.extend(message(del, request | libc::NLM_F_ACK as u16, 2, NFPROTO_INET, 0, &attr));
    batch.extend(message(NFNL_MSG_BATCH_END, request, 3, 0, NFNL_SUBSYS_NFTABLES, &[]));

    let mut sock = match Socket::new(NETLINK_NETFILTER) {
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => return Ok(false),
        other => other?,
    };
    set_receive_timeout(&sock, REMOVE_TABLE_TIMEOUT)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    sock.send(&batch, 0)?;
    loop {
        let data = match sock.recv_from_full() {
            Ok((data, _)) => data,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("nf_tables gave no answer within {} s", REMOVE_TABLE_TIMEOUT.as_secs()),
                ))
            }
            Err(e) => return Err(e),
        };
        if let Some(outcome) = delete_batch_outcome(&data, 1..=3, 2) {
            return outcome;
        }
    }
}

/// What the answers in `data` say of a deletion sent as the message
/// `delete` in a batch of the messages `batch`: None until one of them
/// gets an error message (an error on the batch's begin or end comes
/// instead of the deletion's answer). Ok(false) when there was nothing to
/// delete: no such table, or a kernel without nf_tables.
fn delete_batch_outcome(
    data: &[u8],
    batch: std::ops::RangeInclusive<u32>,
    delete: u32,
) -> Option<std::io::Result<bool>> {
    const NLMSG_ERROR: u16 = 2;
    let mut off = 0;
    while off + 20 <= data.len() {
        let len = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
        let seq = u32::from_ne_bytes(data[off + 8..off + 12].try_into().unwrap());
        if ty == NLMSG_ERROR && batch.contains(&seq) {
            let errno = -i32::from_ne_bytes(data[off + 16..off + 20].try_into().unwrap());
            match errno {
                // An ack of the deletion; a batch message's ack says nothing.
                0 if seq == delete => return Some(Ok(true)),
                0 => {}
                libc::ENOENT | libc::EPROTONOSUPPORT | libc::EOPNOTSUPP => return Some(Ok(false)),
                errno => return Some(Err(std::io::Error::from_raw_os_error(errno))),
            }
        }
        if len < 16 {
            break;
        }
        off += (len + 3) & !3;
    }
    None
}

fn set_receive_timeout(sock: &netlink_sys::Socket, timeout: std::time::Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: timeout.subsec_micros() as _ };
    // SAFETY: setsockopt on a socket we own, with a timeval of its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The run dir's directory of stamps (which rules were applied when).
pub const STAMP_SUBDIR: &str = "masq";

fn stamp_path(run_dir: &Path, network: &str) -> PathBuf {
    run_dir.join(STAMP_SUBDIR).join(format!("{}.applied", chain_name(network)))
}

/// What a stamp is valid for: this boot and this network namespace (the
/// generation counts per namespace and restarts at boot).
fn scope() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    Some(format!("boot {} netns {}:{}", boot.trim(), ns.dev(), ns.ino()))
}

fn stamp_body(scope: &str, generation: u32, script: &str) -> String {
    format!("{scope}\ngeneration {generation}\n{script}")
}

fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("stamp has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}", path.file_name().unwrap().to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

/// The nftables ruleset generation of the calling thread's network
/// namespace (NFT_MSG_GETGEN): it moves on every committed transaction.
pub fn nft_generation() -> std::io::Result<u32> {
    use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_NEWGEN: u16 = 15;
    const NFT_MSG_GETGEN: u16 = 16;
    const NFTA_GEN_ID: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("NFT_MSG_GETGEN: {m}"));

    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // nlmsghdr (16) + nfgenmsg (4): family AF_UNSPEC, version 0, res_id 0
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0, 0, 0, 0]);
    sock.send(&req, 0)?;
    let (data, _) = sock.recv_from_full()?;
    if data.len() < 20 {
        return Err(bad("short reply"));
    }
    let ty = u16::from_ne_bytes([data[4], data[5]]);
    if ty == NLMSG_ERROR {
        let errno = i32::from_ne_bytes([data[16], data[17], data[18], data[19]]);
        return Err(std::io::Error::from_raw_os_error(-errno));
    }
    if ty != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return Err(bad("unexpected reply type"));
    }
    let len = (u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize).min(data.len());
    let mut off = 20;
    while off + 4 <= len {
        let alen = u16::from_ne_bytes([data[off], data[off + 1]]) as usize;
        let atype = u16::from_ne_bytes([data[off + 2], data[off + 3]]) & 0x3fff;
        if alen < 4 || off + alen > len {
            break;
        }
        if atype == NFTA_GEN_ID && alen >= 8 {
            return Ok(u32::from_be_bytes([data[off + 4], data[off + 5], data[off + 6], data[off + 7]]));
        }
        off += (alen + 3) & !3;
    }
    Err(bad("no NFTA_GEN_ID"))
}

fn apply(body: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::kernel("ipMasq: cannot run nft (install the nftables package)", e))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(body.as_bytes())
        .map_err(|e| CniError::kernel("ipMasq: writing to nft", e))?;
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
        let s = script(
            "k8s-pod-network",
            &["10.244.1.0/24".parse().unwrap(), "fd00:1::/64".parse().unwrap()],
            &["10.244.0.0/16".parse().unwrap()],
        );
        assert!(s.contains("ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade"), "{s}");
        assert!(s.contains("ip6 saddr { fd00:1::/64 } ip6 daddr != { fd00:1::/64, ff00::/8 } masquerade"), "{s}");
        assert!(s.contains("flush chain inet weir masq_k8s_pod_network_"), "{s}");
    }

    /// An nlmsgerr as the kernel sends it: header, errno, the request's header.
    fn nlmsgerr(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-errno).to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        m
    }

    #[test]
    fn an_error_on_any_message_of_the_batch_ends_the_wait() {
        let outcome = |data: Vec<u8>| delete_batch_outcome(&data, 1..=3, 2).map(|r| r.map_err(|e| e.raw_os_error()));
        assert_eq!(outcome(nlmsgerr(2, 0)), Some(Ok(true)), "deleted");
        assert_eq!(outcome(nlmsgerr(2, libc::ENOENT)), Some(Ok(false)), "no table");
        // A kernel without nf_tables answers the batch's begin: nothing to remove.
        assert_eq!(outcome(nlmsgerr(1, libc::EPROTONOSUPPORT)), Some(Ok(false)));
        assert_eq!(outcome(nlmsgerr(3, libc::EOPNOTSUPP)), Some(Ok(false)));
        assert_eq!(outcome(nlmsgerr(1, libc::EPERM)), Some(Err(Some(libc::EPERM))), "an error on the begin");
        // The batch begin's ack says nothing of the deletion; another
        // request's answer is not ours.
        assert_eq!(outcome(nlmsgerr(1, 0)), None);
        assert_eq!(outcome(nlmsgerr(9, libc::EPERM)), None);
        let mut both = nlmsgerr(1, 0);
        both.extend(nlmsgerr(2, 0));
        assert_eq!(outcome(both), Some(Ok(true)), "the answer after an ack in the same read");
    }
}
