//! install.sh into a temporary prefix, and the shipped conflist. install.sh
//! runs `weir-policyd install-cni` from `--from`: build the workspace's
//! binaries first (`cargo build --workspace --bins`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn install(args: &[&str]) -> std::process::Output {
    Command::new("bash").arg(repo().join("install.sh")).args(args).output().unwrap()
}

#[test]
fn shipped_conflist_is_a_valid_weir_chain() {
    let text = std::fs::read_to_string(repo().join("conf/10-weir.conflist")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    // What libcni 1.1 (containerd 1.6/1.7, podman 4) accepts as well as 1.2+.
    assert_eq!(v["cniVersion"], "1.0.0");
    // libcni passes runtimeConfig.ips/mac/bandwidth only for declared
    // capabilities (bandwidth: whether "auto" may attach with tc).
    assert_eq!(v["plugins"][0]["capabilities"], serde_json::json!({"ips": true, "mac": true, "bandwidth": true}));
    let types: Vec<&str> = v["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["weir", "portmap", "bandwidth"]);
    let conf = weir_cni::config::parse_netconf(v).unwrap();
    assert!(conf.policy.enforce);
    assert_eq!(conf.name, "weir");
}

#[test]
fn install_is_idempotent_and_uninstalls() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().to_str().unwrap();
    let from = Path::new(env!("CARGO_BIN_EXE_weir")).parent().unwrap().to_str().unwrap().to_string();
    let help = install(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--uninstall"));
    for _ in 0..2 {
        let out = install(&["--prefix", prefix, "--no-apt", "--from", &from, "--pod-cidr", "10.77.3.0/24"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let weir = tmp.path().join("opt/cni/bin/weir");
    assert_eq!(std::fs::read(&weir).unwrap(), std::fs::read(env!("CARGO_BIN_EXE_weir")).unwrap());
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("etc/cni/net.d/10-weir.conflist")).unwrap())
            .unwrap();
    assert_eq!(list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.77.3.0/24");
    assert_eq!(list["cniVersion"], "1.0.0", "the default every runtime accepts");
    // No temporary files left behind by write-then-rename (hidden names
    // beside the destination); the one hidden file is install-cni's record
    // of what it wrote (weir_policyd::install::record).
    let record = tmp.path().join("opt/cni/bin").join(weir_common::paths::INSTALL_RECORD);
    assert!(record.is_file());
    for d in ["opt/cni/bin", "etc/cni/net.d", "usr/local/bin"] {
        for e in std::fs::read_dir(tmp.path().join(d)).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!n.starts_with('.') || tmp.path().join(d).join(&n) == record, "leftover {n}");
        }
    }
    // A host plugin of its own in the CNI bin dir: not Weir's to remove.
    std::fs::write(tmp.path().join("opt/cni/bin/host-local"), b"the host's").unwrap();
    // weir-policyd uninstall does the work, on the prefix's files only.
    let out = install(&["--prefix", prefix, "--uninstall"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(&format!("removed {}", weir.display())), "{said}");
    assert!(!weir.exists() && !record.exists());
    assert!(!tmp.path().join("etc/cni/net.d/10-weir.conflist").exists());
    assert!(!tmp.path().join("usr/local/bin/weir-policyd").exists());
    assert_eq!(std::fs::read(tmp.path().join("opt/cni/bin/host-local")).unwrap(), b"the host's");
    assert!(!install(&["--bogus"]).status.success());
}

/// Without weir-policyd (the one uninstall logic, which first checks that
/// no pod uses Weir), `install.sh --uninstall` refuses and removes nothing.
#[test]
fn uninstall_without_weir_policyd_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().to_str().unwrap();
    let from = Path::new(env!("CARGO_BIN_EXE_weir")).parent().unwrap().to_str().unwrap().to_string();
    let out = install(&["--prefix", prefix, "--no-apt", "--from", &from, "--pod-cidr", "10.77.4.0/24"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(tmp.path().join("usr/local/bin/weir-policyd")).unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = install(&["--prefix", prefix, "--uninstall", "--from", empty.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no weir-policyd") && err.contains("nothing was removed"), "{err}");
    assert!(tmp.path().join("etc/cni/net.d/10-weir.conflist").exists() && tmp.path().join("opt/cni/bin/weir").exists());
}

/// Chained plugins standing in for portmap/bandwidth: answer VERSION with
/// `versions`, as the reference plugins do, without reading stdin and with
/// a second write after the answer (install.sh once piped this into
/// `grep -q` under pipefail: the late write's SIGPIPE read as "does not
/// speak the version").
fn chained_plugins(bin_dir: &Path, versions: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(bin_dir).unwrap();
    let list = versions.iter().map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(",");
    let script =
        format!("#!/bin/sh\necho '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[{list}]}}'\nsleep 0.2\necho\n");
    for p in ["portmap", "bandwidth"] {
        let path = bin_dir.join(p);
        std::fs::write(&path, &script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn cni_version_1_1_0_is_opt_in_and_refused_when_a_chained_plugin_lacks_it() {
    let from = Path::new(env!("CARGO_BIN_EXE_weir")).parent().unwrap().to_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().to_str().unwrap();
    let bin = tmp.path().join("opt/cni/bin");
    let conflist = tmp.path().join("etc/cni/net.d/10-weir.conflist");

    chained_plugins(&bin, &["0.3.0", "0.3.1", "0.4.0", "1.0.0"]);
    let out = install(&["--prefix", prefix, "--no-apt", "--from", &from, "--cni-version", "1.1.0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("portmap does not speak cniVersion 1.1.0") && err.contains("nothing was changed"), "{err}");
    assert!(!bin.join("weir").exists() && !conflist.exists(), "a refused install changes nothing");

    chained_plugins(&bin, &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    let out = install(&["--prefix", prefix, "--no-apt", "--from", &from, "--cni-version", "1.1.0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    assert_eq!(list["cniVersion"], "1.1.0");

    let out = install(&["--prefix", prefix, "--no-apt", "--from", &from, "--cni-version", "2.0.0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cni-version 2.0.0: weir speaks"));
}
