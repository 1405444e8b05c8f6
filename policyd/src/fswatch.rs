//! Directory change notification with inotify.
//!
//! The endpoint registry is on the pod-start path: CNI ADD waits for policyd
//! to see a new record, so polling would add its interval to every pod start.
//! inotify wakes us as the record is renamed into place.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tokio::sync::mpsc;

/// Start watching `dir` (created if missing). Each batch of changes to its
/// entries sends one `()`; the receiver re-reads the directory, so events
/// may coalesce but a change is never missed after this returns.
pub fn watch_dir(dir: &Path) -> io::Result<mpsc::Receiver<()>> {
    std::fs::create_dir_all(dir)?;
    // SAFETY: plain syscalls; the fd is owned by the thread below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let cpath = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "directory path holds a NUL byte"))?;
    let mask = libc::IN_CREATE
        | libc::IN_DELETE
        | libc::IN_MOVED_TO
        | libc::IN_MOVED_FROM
        | libc::IN_CLOSE_WRITE
        | libc::IN_DELETE_SELF;
    let wd = unsafe { libc::inotify_add_watch(fd, cpath.as_ptr(), mask) };
    if wd < 0 {
        let e = io::Error::last_os_error();
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let (tx, rx) = mpsc::channel(1);
    std::thread::Builder::new().name(format!("watch {}", dir.display())).spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // A full channel already holds a pending wake-up: coalesce.
            if n <= 0 || matches!(tx.try_send(()), Err(mpsc::error::TrySendError::Closed(_))) {
                break;
            }
        }
        unsafe { libc::close(fd) };
    })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_renamed_file_wakes_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let mut rx = watch_dir(dir.path()).unwrap();
        std::fs::write(dir.path().join("x.tmp"), b"{}").unwrap();
        std::fs::rename(dir.path().join("x.tmp"), dir.path().join("x.json")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("no wake-up").unwrap();
        std::fs::remove_file(dir.path().join("x.json")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("no wake-up").unwrap();
    }
}
