//! Mounting bpffs where a fresh machine has none.
//!
//! Debian and most distributions without systemd's `sys-fs-bpf.mount` boot
//! with nothing mounted at `/sys/fs/bpf`. The long-running parts of Weir
//! (weir-policyd, `weirctl lab`) mount it there when it is absent, as
//! systemd would (`mode=0700`, nosuid, nodev, noexec). The CNI binary never
//! does: a runtime's ADD must not change the host's mounts, so it keeps
//! reporting [`Error::BpffsNotMounted`].
//!
//! Only the standard mount point is ever mounted, and only when no bpffs is
//! there: an existing bpffs is used as it is, never remounted, and another
//! filesystem mounted at `/sys/fs/bpf` is an error, never mounted over. The
//! one exception is sysfs itself: that is the host's empty `/sys/fs/bpf`
//! directory bind-mounted into a container (a DaemonSet's hostPath volume),
//! and bpffs mounted on it reaches the host through Bidirectional
//! propagation.

use crate::error::Error;
use crate::sys;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where bpffs belongs, and the only place Weir mounts it.
pub const MOUNT_POINT: &str = "/sys/fs/bpf";

/// What [`ensure_mounted_for`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// bpffs was already there (or `root` is not under [`MOUNT_POINT`], so
    /// mounting is not Weir's business; `Dataplane::load_or_open` judges it).
    Present,
    /// This call mounted bpffs at the path.
    Mounted(PathBuf),
}

/// Make sure bpffs is mounted at [`MOUNT_POINT`] when `root` (a bpffs root
/// such as `/sys/fs/bpf/weir`) lies under it. Safe against concurrent
/// callers (two policyds of a lab starting together mount it once).
pub fn ensure_mounted_for(root: &Path) -> Result<Mount, Error> {
    let mount_point = Path::new(MOUNT_POINT);
    if !root.starts_with(mount_point) {
        return Ok(Mount::Present);
    }
    ensure_mounted_at(mount_point)
}

fn is_bpffs(path: &Path) -> Result<bool, Error> {
    Ok(sys::fs_type(path).map_err(|e| Error::io("cannot statfs", path, e))? == sys::BPF_FS_MAGIC)
}

fn ensure_mounted_at(mount_point: &Path) -> Result<Mount, Error> {
    if is_bpffs(mount_point)? {
        return Ok(Mount::Present);
    }
    // Serialise on the directory under the mount point: every caller that
    // gets here opened that same directory (after a mount, the path leads
    // to the bpffs root and the check above answers). Re-checking under
    // the lock keeps a second caller from stacking a second bpffs on top
    // of the first, which would hide whatever was pinned in the first.
    let dir = File::open(mount_point).map_err(|e| Error::io("cannot open", mount_point, e))?;
    // SAFETY: flock on an fd we own; released when `dir` is dropped.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io("cannot lock", mount_point, io::Error::last_os_error()));
    }
    if is_bpffs(mount_point)? {
        return Ok(Mount::Present);
    }
    match mounted_fstype(mount_point)? {
        None => {}
        Some(fstype) if fstype == "sysfs" => {}
        Some(fstype) => return Err(Error::OtherFsMounted { path: mount_point.to_path_buf(), fstype }),
    }
    mount_bpf(mount_point).map_err(|source| Error::Mount { path: mount_point.to_path_buf(), source })?;
    Ok(Mount::Mounted(mount_point.to_path_buf()))
}

fn mount_bpf(at: &Path) -> io::Result<()> {
    let target = CString::new(at.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let r =
        unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), flags, c"mode=0700".as_ptr().cast()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The filesystem type of the topmost mount at exactly `path`, from this
/// process's mountinfo; `None` when nothing is mounted there.
fn mounted_fstype(path: &Path) -> Result<Option<String>, Error> {
    let info = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(info).map_err(|e| Error::io("cannot read", info, e))?;
    Ok(fstype_at(&text, path))
}

/// mountinfo(5): `id parent major:minor root mount-point options... - fstype
/// source super-options`; the last line for a mount point is the topmost.
fn fstype_at(mountinfo: &str, path: &Path) -> Option<String> {
    let want = path.as_os_str().as_bytes();
    mountinfo
        .lines()
        .rev()
        .filter(|l| l.split(' ').nth(4).is_some_and(|mp| unescape(mp) == want))
        .filter_map(|l| l.split_once(" - ").and_then(|(_, rest)| rest.split(' ').next()).map(str::to_string))
        .next()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:9 - bpf bpf rw,mode=700
31 22 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
40 30 0:35 / /sys/fs/bpf rw,relatime - tmpfs tmpfs rw
41 1 0:36 / /mnt/with\\040space rw - ext4 /dev/sda1 rw
";

    #[test]
    fn the_topmost_mount_at_exactly_the_path_counts() {
        assert_eq!(fstype_at(INFO, Path::new("/sys/fs/bpf")).as_deref(), Some("tmpfs"));
        assert_eq!(fstype_at(INFO, Path::new("/sys")).as_deref(), Some("sysfs"));
        // A mount below or above is not one at the path.
        assert_eq!(fstype_at(INFO, Path::new("/sys/fs")), None);
        assert_eq!(fstype_at(INFO, Path::new("/sys/fs/bpf/weir")), None);
        assert_eq!(fstype_at(INFO, Path::new("/mnt/with space")).as_deref(), Some("ext4"));
    }

    #[test]
    fn roots_outside_the_mount_point_are_not_weirs_to_mount() {
        assert_eq!(ensure_mounted_for(Path::new("/tmp/somewhere")).unwrap(), Mount::Present);
    }
}
