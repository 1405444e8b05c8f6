//! install.sh into a temporary prefix, and the shipped conflist.

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
    assert_eq!(v["cniVersion"], "1.1.0");
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
        let out = install(&["--prefix", prefix, "--no-apt", "--from", &from, "--pod-cidr", "10.77.3.0/24", "--cni-version", "1.1.0"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let weir = tmp.path().join("opt/cni/bin/weir");
    assert_eq!(std::fs::read(&weir).unwrap(), std::fs::read(env!("CARGO_BIN_EXE_weir")).unwrap());
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("etc/cni/net.d/10-weir.conflist")).unwrap()).unwrap();
    assert_eq!(list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.77.3.0/24");
    // No temporary files left behind by write-then-rename.
    for d in ["opt/cni/bin", "etc/cni/net.d"] {
        for e in std::fs::read_dir(tmp.path().join(d)).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!n.contains(".tmp."), "leftover {n}");
        }
    }
    let out = install(&["--prefix", prefix, "--uninstall"]);
    assert!(out.status.success());
    assert!(!weir.exists());
    assert!(!tmp.path().join("etc/cni/net.d/10-weir.conflist").exists());
    assert!(!install(&["--bogus"]).status.success());
}
