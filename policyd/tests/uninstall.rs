//! `weir-policyd uninstall --files-only`, the real binary, on an install
//! under temporary directories (no root needed: no kernel state is
//! touched): a step that fails stops the run there, with what came before
//! it done and nothing after it touched, and a re-run once the cause is
//! fixed finishes the job.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use weir_policyd::install::{conflist, record::Record};

const POLICYD: &str = env!("CARGO_BIN_EXE_weir-policyd");

struct Host {
    tmp: tempfile::TempDir,
}

impl Host {
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// install-cni from stand-in binaries, then the state a node gathers:
    /// an IPAM store, pins (a plain directory here), a run dir.
    fn installed() -> Host {
        let h = Host { tmp: tempfile::tempdir().unwrap() };
        let from = h.path("image");
        std::fs::create_dir_all(&from).unwrap();
        for p in ["weir", "portmap", "bandwidth", "loopback"] {
            std::fs::write(from.join(p), format!("#!/bin/sh\n# {p}\n")).unwrap();
            std::fs::set_permissions(from.join(p), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = Command::new(POLICYD)
            .args(["install-cni", "--pod-cidr", "10.66.1.0/24", "--from"])
            .arg(&from)
            .arg("--bin-dir")
            .arg(h.path("bin"))
            .arg("--conf-dir")
            .arg(h.path("conf"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for d in ["data/weir", "pins/links", "run/endpoints"] {
            std::fs::create_dir_all(h.path(d)).unwrap();
        }
        std::fs::write(h.path("data/weir/last_reserved_ip.0"), "10.66.1.9").unwrap();
        h
    }

    fn uninstall(&self, data_dir: &Path) -> Output {
        Command::new(POLICYD)
            .args(["uninstall", "--files-only", "--bin-dir"])
            .arg(self.path("bin"))
            .arg("--conf-dir")
            .arg(self.path("conf"))
            .arg("--bpffs-root")
            .arg(self.path("pins"))
            .arg("--run-dir")
            .arg(self.path("run"))
            .arg("--ipam-data-dir")
            .arg(data_dir)
            .env_remove("NODE_NAME")
            .output()
            .unwrap()
    }
}

#[test]
fn a_failed_step_stops_the_run_there_and_a_rerun_finishes() {
    let h = Host::installed();
    // The IPAM store's parent is a regular file: its removal fails (even
    // for root), after the conflist and binaries went, before the pins.
    let blocker = h.path("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let out = h.uninstall(&blocker);
    let (said, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{said}{err}");
    assert!(err.contains("IPAM store") && err.contains("not-a-dir/weir"), "names the step and path: {err}");
    assert!(err.contains("run uninstall again"), "{err}");
    assert!(said.contains(&format!("removed {}", h.path("conf").join(conflist::FILE_NAME).display())), "{said}");
    assert!(!h.path("conf").join(conflist::FILE_NAME).exists() && !h.path("bin/weir").exists());
    assert!(h.path("pins/links").is_dir() && h.path("run/endpoints").is_dir(), "nothing after the failure touched");
    // The record is kept, holding what a re-run needs now that the conflist is gone.
    let record = Record::read(&h.path("bin")).unwrap().expect("the record stays until the end");
    assert_eq!(record.network.name, "weir");
    // The conflist's places (the node's), not those this run was given.
    assert_eq!(record.network.run_dir, PathBuf::from(weir_common::paths::DEFAULT_RUN_DIR));
    assert_eq!(record.network.bpffs_root, PathBuf::from(weir_common::paths::DEFAULT_BPFFS_ROOT));

    let out = h.uninstall(&h.path("data"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        format!("removed IPAM store {}", h.path("data/weir").display()),
        format!("removed pins {}", h.path("pins").display()),
        format!("removed run dir {}", h.path("run").display()),
        format!("removed {}", Record::path(&h.path("bin")).display()),
    ] {
        assert!(said.lines().any(|l| l == line), "missing {line:?} in:\n{said}");
    }
    assert!(!said.contains("conflist") && !said.contains("annotation"), "done before, or not asked: {said}");
    let mut left: Vec<String> = std::fs::read_dir(h.path("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert!(left.is_empty(), "every binary here was Weir's: {left:?}");
}

#[test]
fn only_weirs_entries_go_and_a_directory_holding_others_is_left() {
    let h = Host::installed();
    // What others keep beside Weir's state, had the conflist pointed the
    // places at shared directories.
    std::fs::write(h.path("run/containerd.sock"), b"").unwrap();
    std::fs::write(h.path("run/policyd.heartbeat.bak"), b"").unwrap();
    std::fs::create_dir_all(h.path("pins/another_prog")).unwrap();
    // Weir's (the endpoints map is left out: its pin would count as in use).
    std::fs::write(h.path("pins/weir_ct"), b"").unwrap();
    std::fs::create_dir_all(h.path("pins/build-0123456789abcdef")).unwrap();
    std::fs::create_dir_all(h.path("run/masq")).unwrap();
    std::fs::write(h.path("data/weir/10.66.1.7"), "ctr\r\neth0").unwrap();
    std::fs::write(h.path("data/weir/notes.txt"), b"").unwrap();
    let out = h.uninstall(&h.path("data"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    for (dir, what, foreign) in [
        ("run", "run dir", "containerd.sock, policyd.heartbeat.bak"),
        ("pins", "pins", "another_prog"),
        ("data/weir", "IPAM store", "notes.txt"),
    ] {
        let line = format!("left {what} {}: not empty, it holds what is not Weir's: {foreign}", h.path(dir).display());
        assert!(said.lines().any(|l| l == line), "missing {line:?} in:\n{said}");
    }
    let mut kept = Vec::new();
    for dir in ["run", "pins", "data/weir"] {
        for e in std::fs::read_dir(h.path(dir)).unwrap() {
            kept.push(format!("{dir}/{}", e.unwrap().file_name().to_string_lossy()));
        }
    }
    kept.sort();
    assert_eq!(
        kept,
        ["data/weir/notes.txt", "pins/another_prog", "run/containerd.sock", "run/policyd.heartbeat.bak"],
        "Weir's entries gone, every other one kept"
    );
}

#[test]
fn a_place_that_is_a_whole_filesystem_or_too_shallow_is_refused_before_anything_goes() {
    let h = Host::installed();
    // devpts is mounted on /dev/pts on every Linux host; no name in it is
    // one of Weir's pins.
    for (bad, why) in [("/dev/pts", "a mount point"), ("/", "not a directory of Weir's own")] {
        let out = Command::new(POLICYD)
            .args(["uninstall", "--files-only", "--bin-dir"])
            .arg(h.path("bin"))
            .arg("--conf-dir")
            .arg(h.path("conf"))
            .args(["--bpffs-root", bad, "--run-dir"])
            .arg(h.path("run"))
            .arg("--ipam-data-dir")
            .arg(h.path("data"))
            .env_remove("NODE_NAME")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(&format!("bpffs root {bad}: {why}")) && err.contains("nothing was removed"), "{err}");
        assert!(h.path("conf").join(conflist::FILE_NAME).exists() && h.path("bin/weir").exists());
    }
}

/// A pod's ADD that read the conflist just before uninstall removed it:
/// here it holds the IPAM store's lock (as ADD does while it allocates)
/// when the uninstall starts, and reserves an address once the conflist is
/// gone. Uninstall, waiting for that lock to look again, sees the new
/// reservation, puts the conflist back and refuses, with nothing else
/// removed.
#[test]
fn an_add_racing_the_uninstall_puts_the_conflist_back_and_refuses() {
    use weir_cni::ipam::allocator::Store;
    let h = Host::installed();
    let conflist_path = h.path("conf").join(conflist::FILE_NAME);
    let conflist_before = std::fs::read(&conflist_path).unwrap();
    let mut add = weir_cni::ipam::disk::DiskStore::open(&h.path("data/weir")).unwrap();
    let mut cmd = Command::new(POLICYD);
    cmd.args(["uninstall", "--files-only", "--bin-dir"])
        .arg(h.path("bin"))
        .arg("--conf-dir")
        .arg(h.path("conf"))
        .arg("--bpffs-root")
        .arg(h.path("pins"))
        .arg("--run-dir")
        .arg(h.path("run"))
        .arg("--ipam-data-dir")
        .arg(h.path("data"))
        .env_remove("NODE_NAME")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    // The conflist goes first; then uninstall waits for the lock we hold.
    while conflist_path.exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(add.reserve("ctr-racing", "eth0", "10.66.1.5".parse().unwrap(), 0).unwrap());
    drop(add);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}{err}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("a pod was added while uninstall ran"), "{err}");
    assert!(err.contains("container ctr-racing reserved 10.66.1.5"), "names the pod's ADD: {err}");
    assert_eq!(std::fs::read(&conflist_path).unwrap(), conflist_before, "the conflist is back as it was");
    assert!(h.path("bin/weir").exists() && h.path("data/weir/10.66.1.5").exists() && h.path("pins/links").is_dir());
}

/// A DaemonSet's run: the host's / mounted at a directory (a temporary
/// one here) and given as --host-root, every place a host path: the CNI
/// directories given, the network's taken from the conflist, then, once
/// the conflist is gone, from the install record; none given as
/// --bpffs-root, --run-dir or --ipam-data-dir. The host paths exist only
/// under the temporary root, never on this machine.
#[test]
fn under_a_host_root_the_places_are_the_hosts_and_a_resumed_run_takes_them_from_the_record() {
    const BASE: &str = "/weir-host-root-test";
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("host");
    let on_host = |p: &str| root.join(format!("{BASE}/{p}").trim_start_matches('/'));
    let from = t.path().join("image");
    std::fs::create_dir_all(&from).unwrap();
    for p in ["weir", "portmap", "bandwidth", "loopback"] {
        std::fs::write(from.join(p), format!("#!/bin/sh\n# {p}\n")).unwrap();
    }
    let out = Command::new(POLICYD)
        .args(["install-cni", "--pod-cidr", "10.66.1.0/24", "--from"])
        .arg(&from)
        .arg("--bin-dir")
        .arg(on_host("bin"))
        .arg("--conf-dir")
        .arg(on_host("conf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let conflist_path = on_host("conf").join(conflist::FILE_NAME);
    let point_at = |run_dir: &str| {
        let mut list: serde_json::Value = serde_json::from_slice(&std::fs::read(&conflist_path).unwrap()).unwrap();
        list["plugins"][0]["ipam"]["dataDir"] = format!("{BASE}/networks").into();
        list["plugins"][0]["policy"]["bpffsRoot"] = format!("{BASE}/pins").into();
        list["plugins"][0]["policy"]["runDir"] = run_dir.into();
        std::fs::write(&conflist_path, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
    };
    for d in ["pins/links", "run/endpoints"] {
        std::fs::create_dir_all(on_host(d)).unwrap();
    }
    // The IPAM store's place is a file: the run stops there.
    std::fs::create_dir_all(on_host("networks")).unwrap();
    std::fs::write(on_host("networks/weir"), b"").unwrap();
    let uninstall = || {
        Command::new(POLICYD)
            .args(["uninstall", "--files-only", "--host-root"])
            .arg(&root)
            .args(["--bin-dir", &format!("{BASE}/bin"), "--conf-dir", &format!("{BASE}/conf")])
            .env_remove("NODE_NAME")
            .output()
            .unwrap()
    };

    // A place the host root does not hold (not mounted there): refused.
    point_at("/weir-host-root-test-unmounted/run");
    let out = uninstall();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("run dir /weir-host-root-test-unmounted/run: not reachable under --host-root")
            && err.contains("nothing was removed"),
        "{err}"
    );
    assert!(conflist_path.exists() && on_host("bin/weir").exists());

    point_at(&format!("{BASE}/run"));
    let out = uninstall();
    let (said, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{said}{err}");
    assert!(err.contains(&format!("IPAM store: listing {}", on_host("networks/weir").display())), "{err}");
    assert!(!conflist_path.exists() && !on_host("bin/weir").exists(), "the steps before it went");
    let record = Record::read(&on_host("bin")).unwrap().unwrap();
    assert_eq!(record.network.run_dir, PathBuf::from(format!("{BASE}/run")), "the host's path, not ours");

    // Resumed: the conflist is gone, the record says where.
    std::fs::remove_file(on_host("networks/weir")).unwrap();
    std::fs::create_dir_all(on_host("networks/weir")).unwrap();
    std::fs::write(on_host("networks/weir/last_reserved_ip.0"), "10.66.1.9").unwrap();
    let out = uninstall();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        format!("removed IPAM store {}", on_host("networks/weir").display()),
        format!("removed pins {}", on_host("pins").display()),
        format!("removed run dir {}", on_host("run").display()),
        format!("removed {}", Record::path(&on_host("bin")).display()),
    ] {
        assert!(said.lines().any(|l| l == line), "missing {line:?} in:\n{said}");
    }
}
