//! The few raw bpf(2) calls aya 0.14 does not expose: reading a pinned
//! object, the TCX fields of a link's info (which device, which program),
//! swapping the program behind a pinned link, and copying a map's entries
//! as bytes (a migration between map ABIs, whose types this build may not
//! have).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `BPF_FS_MAGIC` from linux/magic.h.
pub const BPF_FS_MAGIC: i64 = 0xcafe4a11;
pub const BPF_LINK_TYPE_TCX: u32 = 11;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zeroed bpf_attr-sized buffer the kernel reads and writes.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// BPF_OBJ_GET: a new fd for the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in pin path"))?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64; // pathname
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The keys of a map whose keys are u32 (BPF_MAP_GET_NEXT_KEY from none),
/// whatever its values are.
pub fn map_u32_keys(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut keys = Vec::new();
    let (mut key, mut next): (Option<u32>, u32) = (None, 0);
    loop {
        let mut attr = [0u64; 16];
        attr[0] = fd.as_raw_fd() as u32 as u64; // map_fd
        attr[1] = key.as_ref().map_or(0, |k| k as *const u32 as u64); // key (NULL: the first)
        attr[2] = &mut next as *mut u32 as u64; // next_key
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {
                keys.push(next);
                key = Some(next);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
            Err(e) => return Err(e),
        }
    }
}

/// A map's shape (struct bpf_map_info's first fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
pub const BPF_MAP_TYPE_RINGBUF: u32 = 27;

pub fn map_shape(fd: BorrowedFd<'_>) -> io::Result<MapShape> {
    let b = obj_info(fd)?;
    // struct bpf_map_info: type, id, key_size, value_size, max_entries
    Ok(MapShape {
        map_type: u32_at(&b, 0),
        key_size: u32_at(&b, 8),
        value_size: u32_at(&b, 12),
        max_entries: u32_at(&b, 16),
    })
}

/// BPF_NOEXIST: an update that leaves an existing entry alone.
pub const BPF_NOEXIST: u64 = 1;

/// Copy every entry of map `from` into map `to` (both of `shape`), as
/// bytes, with update `flags`. Entries the
/// programs add or remove meanwhile may be missed or copied twice. The walk
/// is bounded: a map that changes so fast that it keeps restarting (a
/// deleted cursor restarts it from the first key) is an error, not a
/// partial copy.
pub fn map_copy(from: BorrowedFd<'_>, to: BorrowedFd<'_>, shape: MapShape, flags: u64) -> io::Result<()> {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let per_cpu = match shape.map_type {
        BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_PERCPU_ARRAY | BPF_MAP_TYPE_LRU_PERCPU_HASH => true,
        BPF_MAP_TYPE_HASH | BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_LRU_HASH | BPF_MAP_TYPE_LPM_TRIE => false,
        t => return Err(io::Error::other(format!("map type {t}: not one this copy knows the values of"))),
    };
    let value_len = if per_cpu {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        (shape.value_size as usize).div_ceil(8) * 8 * cpus
    } else {
        shape.value_size as usize
    };
    let (mut key, mut next) = (vec![0u8; shape.key_size as usize], vec![0u8; shape.key_size as usize]);
    let mut value = vec![0u8; value_len];
    let (mut first, mut copied) = (true, 0);
    for _ in 0..(shape.max_entries as u64 * 4 + 1) {
        let mut attr = [0u64; 16];
        attr[0] = from.as_raw_fd() as u32 as u64; // map_fd
        attr[1] = if first { 0 } else { key.as_ptr() as u64 }; // key (NULL: the first)
        attr[2] = next.as_mut_ptr() as u64; // next_key
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut attr = [0u64; 16];
        attr[0] = from.as_raw_fd() as u32 as u64;
        attr[1] = next.as_ptr() as u64;
        attr[2] = value.as_mut_ptr() as u64;
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => {}
            // gone meanwhile: the walk goes on from the key before it
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        }
        first = false;
        std::mem::swap(&mut key, &mut next);
        let mut attr = [0u64; 16];
        attr[0] = to.as_raw_fd() as u32 as u64;
        attr[1] = key.as_ptr() as u64;
        attr[2] = value.as_ptr() as u64;
        attr[3] = flags;
        match bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
            Ok(_) => copied += 1,
            Err(e) if flags == BPF_NOEXIST && e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "the map kept changing under the copy: {copied} entries copied within a walk of {} steps",
        shape.max_entries as u64 * 4 + 1
    )))
}

/// BPF_OBJ_GET_INFO_BY_FD into a zeroed 256-byte buffer (larger than any
/// kernel's info structs, whose unknown tail must be zero).
fn obj_info(fd: BorrowedFd<'_>) -> io::Result<[u8; 256]> {
    let mut info = [0u8; 256];
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u32 as u64 | ((info.len() as u64) << 32); // bpf_fd, info_len
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

/// The kernel id of a program or map.
pub fn obj_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(u32_at(&obj_info(fd)?, 4))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub prog_id: u32,
    /// 0 once the device is gone (the link then is defunct).
    pub ifindex: u32,
    pub attach_type: u32,
}

pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let b = obj_info(fd)?;
    // struct bpf_link_info: type, id, prog_id, then a union aligned on 8;
    // its tcx member is { ifindex, attach_type }.
    Ok(LinkInfo {
        link_type: u32_at(&b, 0),
        prog_id: u32_at(&b, 8),
        ifindex: u32_at(&b, 16),
        attach_type: u32_at(&b, 20),
    })
}

/// BPF_LINK_UPDATE: swap the program behind `link` for `prog` in one step;
/// every packet runs either the old program or the new one, never neither.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [0u64; 16];
    // struct { link_fd, new_prog_fd, flags, old_prog_fd }: flags 0, no old_prog_fd check.
    attr[0] = link.as_raw_fd() as u32 as u64 | ((prog.as_raw_fd() as u32 as u64) << 32);
    bpf(BPF_LINK_UPDATE, &mut attr)?;
    Ok(())
}

/// statfs f_type of `path`.
pub fn fs_type(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: statfs fills the zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// The name of `ifindex` in the calling thread's network namespace.
pub fn if_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

/// Current CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns, which
/// conntrack expiries are written in.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: plain clock read into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
