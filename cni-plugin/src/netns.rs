//! Network namespace switching, confined here: `setns(2)` only ever runs on
//! a short-lived dedicated thread, so the main thread stays in the node's
//! namespace. Sockets opened on that thread stay bound to the pod's
//! namespace after it exits, which is how pod-side netlink works.

use crate::error::{code, CniError, Result};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::io::ErrorKind;

/// Open a namespace path given as `CNI_NETNS`. The namespace weir itself
/// runs in (the node's) is refused: configuring it as a pod would put a pod
/// address and default route on the node.
pub fn open(path: &str) -> Result<File> {
    let ns = open_path(path)?;
    if is_own_netns(&ns)
        .map_err(|e| CniError::io(format!("CNI_NETNS={path:?}: cannot compare with our own namespace"), e))?
    {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS={path:?} is the network namespace weir runs in (the node's own), not a pod's: refusing to \
                 configure the node as a pod; pass the pod sandbox's network namespace"
            ),
        ));
    }
    Ok(ns)
}

/// Whether `ns` is the network namespace of this thread: same nsfs inode.
fn is_own_netns(ns: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let theirs = ns.metadata()?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok(theirs.dev() == ours.dev() && theirs.ino() == ours.ino())
}

fn open_path(path: &str) -> Result<File> {
    File::open(path).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS={path:?} does not exist; pass the path of the pod's network namespace (e.g. /var/run/netns/<id>)"),
            )
        } else {
            CniError::io(format!("CNI_NETNS={path:?} cannot be opened"), e)
        }
    })
}

/// Run `f` on a new thread that has joined the namespace `ns`.
pub fn run_in<T: Send>(ns: &File, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_NETNS is not a network namespace (setns: {e}); pass a netns path"),
                )
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(CniError::new(code::KERNEL, "namespace worker thread panicked")))
    })
}
