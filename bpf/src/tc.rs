//! clsact + cls_bpf filters through rtnetlink: the attachment for kernels
//! without TCX (< 6.6), or when chosen ([`crate::AttachMode::Tc`]). aya
//! 0.14 can add such a filter, but cannot tell which program one runs, and
//! its handles detach when dropped; these few requests (the qdisc, then the
//! filters) do exactly what the dataplane needs, in the calling thread's
//! network namespace, and by ifindex: a pod start resolves no names.
//!
//! Weir's filter on a hook is the one at [`PRIORITY`] with [`HANDLE`]:
//! priority 1 so it runs before any other filter of the hook (one that
//! passes a packet first would skip policy), direct-action so the program's
//! verdict is the action.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

pub const PRIORITY: u16 = 1;
/// "WEIR": any fixed non-zero handle; fixed so a second attach finds the first.
pub const HANDLE: u32 = 0x5745_4952;

const RTM_NEWQDISC: u16 = 36;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_ID: u16 = 11;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
const ETH_P_ALL: u16 = 3;

/// clsact's parent: the qdisc sits beside the device's root, not in it.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// clsact's own handle (major ffff:).
const CLSACT_HANDLE: u32 = 0xFFFF_0000;

/// Which side of clsact: the parent handle of its filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Ingress,
    Egress,
}

impl Side {
    fn parent(self) -> u32 {
        match self {
            Side::Ingress => 0xFFFF_FFF2,
            Side::Egress => 0xFFFF_FFF3,
        }
    }
}

/// A cls_bpf filter as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    pub prog_id: u32,
    pub name: String,
}

struct Socket(OwnedFd);

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the fd is checked and then owned.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket we own.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Send one request and read every reply up to its ACK (or DONE, for a
    /// dump), returning the payloads of the messages of type `want`.
    fn request(&self, msg: &[u8], want: u16) -> io::Result<Vec<Vec<u8>>> {
        // SAFETY: send(2) of a buffer we own; the kernel is the destination (no address).
        if unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: recv(2) into a buffer we own.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(b[4..6].try_into().unwrap());
                if len < 16 || len > b.len() {
                    return Err(io::Error::other("truncated netlink message"));
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let err = i32::from_ne_bytes(b[16..20].try_into().unwrap());
                        return if err == 0 { Ok(out) } else { Err(io::Error::from_raw_os_error(-err)) };
                    }
                    t if t == want => out.push(b[16..len].to_vec()),
                    _ => {}
                }
                b = &b[align(len).min(b.len())..];
            }
        }
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A filter request: nlmsghdr, tcmsg, then attributes appended with [`attr`].
fn message(ty: u16, flags: u16, ifindex: u32, side: Side, handle: u32, priority: u16) -> Vec<u8> {
    let info = ((priority as u32) << 16) | ETH_P_ALL.to_be() as u32;
    tc_message(ty, flags, ifindex, handle, side.parent(), info)
}

fn tc_message(ty: u16, flags: u16, ifindex: u32, handle: u32, parent: u32, info: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish()
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    m.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    m.extend_from_slice(&handle.to_ne_bytes());
    m.extend_from_slice(&parent.to_ne_bytes());
    m.extend_from_slice(&info.to_ne_bytes());
    m
}

fn attr(m: &mut Vec<u8>, ty: u16, data: &[u8]) {
    m.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(data);
    m.resize(align(m.len()), 0);
}

fn finish(mut m: Vec<u8>) -> Vec<u8> {
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// Attributes of a payload: (type without flags, data).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes(b[0..2].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(b[2..4].try_into().unwrap()) & 0x3FFF;
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = &b[align(len).min(b.len())..];
        Some((ty, data))
    })
}

/// Weir's filters (and any other cls_bpf ones) on one side of `ifindex`'s
/// clsact. No device, or no clsact, is no filters.
pub fn filters(ifindex: u32, side: Side) -> io::Result<Vec<Filter>> {
    let sock = Socket::open()?;
    let replies = sock.request(&finish(message(RTM_GETTFILTER, NLM_F_DUMP, ifindex, side, 0, 0)), RTM_NEWTFILTER);
    let replies = match replies {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::EINVAL)) => return Ok(vec![]),
        r => r?,
    };
    let mut out = Vec::new();
    for p in replies {
        if p.len() < 20 {
            continue;
        }
        let handle = u32::from_ne_bytes(p[8..12].try_into().unwrap());
        let priority = (u32::from_ne_bytes(p[16..20].try_into().unwrap()) >> 16) as u16;
        let mut bpf = false;
        let (mut prog_id, mut name) = (0, String::new());
        for (ty, data) in attrs(&p[20..]) {
            match ty {
                TCA_KIND => bpf = data.starts_with(b"bpf\0"),
                TCA_OPTIONS => {
                    for (ty, data) in attrs(data) {
                        match ty {
                            TCA_BPF_ID if data.len() >= 4 => {
                                prog_id = u32::from_ne_bytes(data[..4].try_into().unwrap())
                            }
                            TCA_BPF_NAME => {
                                name = CStr::from_bytes_until_nul(data)
                                    .map(|c| c.to_string_lossy().into_owned())
                                    .unwrap_or_default()
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        // the dump also reports each priority's classifier itself, with handle 0
        if bpf && handle != 0 {
            out.push(Filter { priority, handle, prog_id, name });
        }
    }
    Ok(out)
}

/// Weir's filter on that side, if there is one.
pub fn weir_filter(ifindex: u32, side: Side) -> io::Result<Option<Filter>> {
    Ok(filters(ifindex, side)?.into_iter().find(|f| f.priority == PRIORITY && f.handle == HANDLE))
}

/// Give `ifindex` a clsact qdisc, the parent of the filters. One already
/// there (Weir's or anyone's: a device has at most one) is kept.
pub fn add_clsact(ifindex: u32) -> io::Result<()> {
    let mut m = tc_message(RTM_NEWQDISC, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0);
    attr(&mut m, TCA_KIND, b"clsact\0");
    match Socket::open()?.request(&finish(m), 0) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Put `prog` in Weir's filter: creates it, or (`create` false: only)
/// replaces the program of the one there. cls_bpf swaps the program in one
/// RCU update, so every packet meets the old program or the new one.
pub fn set_filter(ifindex: u32, side: Side, prog: BorrowedFd<'_>, name: &str, create: bool) -> io::Result<()> {
    let flags = NLM_F_ACK | if create { NLM_F_CREATE } else { 0 };
    let mut m = message(RTM_NEWTFILTER, flags, ifindex, side, HANDLE, PRIORITY);
    attr(&mut m, TCA_KIND, b"bpf\0");
    let mut opts = Vec::new();
    attr(&mut opts, TCA_BPF_FD, &(prog.as_raw_fd() as u32).to_ne_bytes());
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    attr(&mut opts, TCA_BPF_NAME, &cname);
    attr(&mut opts, TCA_BPF_FLAGS, &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes());
    attr(&mut m, TCA_OPTIONS | NLA_F_NESTED, &opts);
    Socket::open()?.request(&finish(m), 0).map(|_| ())
}

/// Remove Weir's filter from that side. Already gone is success.
pub fn remove_filter(ifindex: u32, side: Side) -> io::Result<()> {
    if weir_filter(ifindex, side)?.is_none() {
        return Ok(());
    }
    let mut m = message(RTM_DELTFILTER, NLM_F_ACK, ifindex, side, HANDLE, PRIORITY);
    attr(&mut m, TCA_KIND, b"bpf\0");
    match Socket::open()?.request(&finish(m), 0) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(()),
        r => r.map(|_| ()),
    }
}
