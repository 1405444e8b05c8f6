//! Weir's OCI image (image/build.sh): the same binaries give the same
//! archive and digest; podman loads it and runs weir-policyd (the
//! entrypoint), weirctl and weir in it; containerd imports it and runs
//! them too; a bin dir without `weir` is refused by name and leaves
//! nothing behind.
//!
//! The runtime tests need root and Debian's podman, containerd and runc
//! (test/deps.sh); each runs its runtime privately (test/src/runtime.rs).
//! The binaries: WEIR_BIN_DIR or the debug build (`cargo build -p weirctl
//! -p weir-cni -p weir-policyd`).
//!
//!     cargo test -p weir-e2e --test root_image -- --nocapture

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use weir_e2e::lab::{Weirctl, BINARIES};
use weir_e2e::runtime::{one_runtime_at_a_time, output, Containerd, Podman};
use weir_testsupport::{require_root, unique, RemoveOnDrop};

/// Any fixed time: what the image's mtimes and creation date are.
const SOURCE_DATE_EPOCH: &str = "1767225600";

fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/build.sh")
}

fn scratch(prefix: &str) -> RemoveOnDrop {
    let dir = RemoveOnDrop::fresh(std::env::temp_dir().join(unique(prefix)));
    std::fs::create_dir_all(dir.path()).expect("creating the scratch directory");
    dir
}

/// Copies of the binaries without their debug info, in `dir`: a debug
/// build carries some 600 MB of it, which would only make every image
/// build, load and import here slow. What runs is the same code.
fn stripped_binaries(dir: &Path) -> Result<PathBuf> {
    let built = Weirctl::locate()?.bin_dir;
    std::fs::create_dir_all(dir)?;
    for b in BINARIES {
        output(Command::new("strip").arg("--strip-debug").arg("-o").arg(dir.join(b)).arg(built.join(b)))?;
    }
    Ok(dir.to_path_buf())
}

/// What identifies a built image, read back from its archive.
#[derive(Debug, PartialEq)]
struct Image {
    name: String,
    /// The manifest's digest (what a registry and `podman images --digests` show).
    digest: String,
    /// The config's digest (podman's image ID).
    config: String,
}

fn build(bin_dir: &Path, archive: &Path) -> Result<Image> {
    output(
        Command::new("bash")
            .arg(build_script())
            .arg("--bin-dir")
            .arg(bin_dir)
            .arg("--output")
            .arg(archive)
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH),
    )?;
    read_image(archive)
}

/// A file of the OCI layout inside the archive.
fn archived(archive: &Path, name: &str) -> Result<Vec<u8>> {
    let out = Command::new("tar").arg("-xOf").arg(archive).arg(format!("./{name}")).output()?;
    if !out.status.success() {
        bail!("{} has no {name}: {}", archive.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

fn blob(archive: &Path, digest: &str) -> Result<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
    archived(archive, &format!("blobs/sha256/{hex}"))
}

fn read_image(archive: &Path) -> Result<Image> {
    let index: Value = serde_json::from_slice(&archived(archive, "index.json")?)?;
    let entry = &index["manifests"][0];
    let digest = entry["digest"].as_str().context("index.json: manifests[0].digest")?.to_string();
    let name = entry["annotations"]["org.opencontainers.image.ref.name"].as_str().context("the image's name")?;
    let manifest: Value = serde_json::from_slice(&blob(archive, &digest)?)?;
    let config = manifest["config"]["digest"].as_str().context("manifest: config.digest")?.to_string();
    Ok(Image { name: name.to_string(), digest, config })
}

/// What a binary of the bin dir prints on this host.
fn host_output(bin_dir: &Path, bin: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let mut cmd = Command::new(bin_dir.join(bin));
    cmd.args(args).envs(env.iter().copied());
    output(&mut cmd)
}

#[test]
fn the_same_binaries_give_the_same_archive_and_digest() -> Result<()> {
    let dir = scratch("wimgrep");
    let bins = stripped_binaries(&dir.path().join("bin"))?;
    let first = build(&bins, &dir.path().join("first.oci.tar"))?;

    // The second build sees the same bytes through everything that must
    // not matter: other file times, another umask, another output path.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again)?;
    for b in BINARIES {
        std::fs::copy(bins.join(b), again.join(b))?;
        output(Command::new("touch").args(["-d", "2001-02-03 04:05:06"]).arg(again.join(b)))?;
    }
    let second_archive = dir.path().join("out/second.oci.tar");
    output(
        Command::new("sh")
            .arg("-c")
            .arg("umask 077 && exec bash \"$0\" --bin-dir \"$1\" --output \"$2\"")
            .arg(build_script())
            .arg(&again)
            .arg(&second_archive)
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH),
    )?;
    let second = read_image(&second_archive)?;

    assert_eq!(first, second, "same binaries, same image");
    assert!(
        std::fs::read(dir.path().join("first.oci.tar"))? == std::fs::read(&second_archive)?,
        "the archives differ byte for byte"
    );

    // What the image holds: the three binaries side by side (install-cni
    // finds weir beside weir-policyd), the loader, and the entrypoint.
    let manifest: Value = serde_json::from_slice(&blob(&second_archive, &second.digest)?)?;
    let layer = manifest["layers"][0]["digest"].as_str().context("manifest: layers[0].digest")?;
    let layer_file = dir.path().join("layer.tar.gz");
    std::fs::write(&layer_file, blob(&second_archive, layer)?)?;
    let listing = output(Command::new("tar").arg("-tvzf").arg(&layer_file))?;
    for path in [
        "./usr/local/bin/weir",
        "./usr/local/bin/weir-policyd",
        "./usr/local/bin/weirctl",
        "./lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(&format!(" {path}"))), "{path} missing from the layer:\n{listing}");
    }
    assert!(listing.lines().all(|l| l.contains(" 0/0 ")), "every file is owned by 0:0:\n{listing}");
    let config: Value = serde_json::from_slice(&blob(&second_archive, &second.config)?)?;
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/local/bin/weir-policyd"]));
    assert_eq!(config["created"], "2026-01-01T00:00:00Z", "the creation date is SOURCE_DATE_EPOCH's");
    Ok(())
}

#[test]
fn a_bin_dir_without_weir_is_refused_by_name_and_leaves_nothing() -> Result<()> {
    let dir = scratch("wimgbad");
    let built = Weirctl::locate()?.bin_dir;
    let bins = dir.path().join("bin");
    std::fs::create_dir_all(&bins)?;
    for b in ["weir-policyd", "weirctl"] {
        std::os::unix::fs::symlink(built.join(b), bins.join(b))?;
    }
    // An archive from an earlier build stays as it was.
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir)?;
    let archive = out_dir.join("weir.oci.tar");
    std::fs::write(&archive, "an earlier archive")?;

    let run = Command::new("bash")
        .arg(build_script())
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--output")
        .arg(&archive)
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
        .output()?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "the build must fail");
    assert!(stderr.contains(&format!("{} has no executable weir:", bins.display())), "the error names weir: {stderr}");
    assert!(stderr.contains("--bin-dir"), "the error says how to fix it: {stderr}");
    let left: Vec<_> = std::fs::read_dir(&out_dir)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    assert_eq!(left, vec![std::ffi::OsString::from("weir.oci.tar")], "nothing but the earlier archive");
    assert_eq!(std::fs::read_to_string(&archive)?, "an earlier archive");
    Ok(())
}

/// The CNI binary answers VERSION from its environment: it runs in the
/// image when it prints what it prints on the host.
const CNI_VERSION_ENV: (&str, &str) = ("CNI_COMMAND", "VERSION");

#[test]
fn root_podman_loads_the_image_and_runs_the_binaries_in_it() {
    require_root!("podman runs containers");
    let _one = one_runtime_at_a_time();
    podman_loads_and_runs().unwrap();
}

fn podman_loads_and_runs() -> Result<()> {
    let dir = scratch("wimgpod");
    let bins = stripped_binaries(&dir.path().join("bin"))?;
    let image = build(&bins, &dir.path().join("weir.oci.tar"))?;
    let podman = Podman::new()?;

    podman.run(&["load", "--quiet", "--input", &dir.path().join("weir.oci.tar").to_string_lossy()])?;
    let seen = podman.run(&["image", "inspect", "--format", "sha256:{{.Id}} {{.Digest}}", &image.name])?;
    assert_eq!(seen.trim(), format!("{} {}", image.config, image.digest), "podman holds exactly the built image");

    let policyd = podman.run_container(&[], &image.name, &["--version"])?;
    assert_eq!(policyd, host_output(&bins, "weir-policyd", &["--version"], &[])?, "the entrypoint is weir-policyd");
    let weirctl = podman.run_container(&["--entrypoint", "/usr/local/bin/weirctl"], &image.name, &["--version"])?;
    assert_eq!(weirctl, host_output(&bins, "weirctl", &["--version"], &[])?);
    let env = format!("{}={}", CNI_VERSION_ENV.0, CNI_VERSION_ENV.1);
    let weir = podman.run_container(&["--entrypoint", "/usr/local/bin/weir", "--env", &env], &image.name, &[])?;
    assert_eq!(weir, host_output(&bins, "weir", &[], &[CNI_VERSION_ENV])?);
    Ok(())
}

#[test]
fn root_containerd_imports_the_image_and_runs_the_binaries_in_it() {
    require_root!("containerd runs containers");
    let _one = one_runtime_at_a_time();
    containerd_imports_and_runs().unwrap();
}

fn containerd_imports_and_runs() -> Result<()> {
    let dir = scratch("wimgctd");
    let bins = stripped_binaries(&dir.path().join("bin"))?;
    let archive = dir.path().join("weir.oci.tar");
    let image = build(&bins, &archive)?;
    let containerd = Containerd::start()?;

    containerd.ctr(&["image", "import", &archive.to_string_lossy()])?;
    let listed = containerd.ctr(&["image", "list"])?;
    assert!(
        listed.lines().any(|l| l.starts_with(&format!("{} ", image.name)) && l.contains(&image.digest)),
        "containerd holds {} at {}:\n{listed}",
        image.name,
        image.digest
    );

    let policyd = containerd.run_container(&[], &image.name, &["/usr/local/bin/weir-policyd", "--version"])?;
    assert_eq!(policyd, host_output(&bins, "weir-policyd", &["--version"], &[])?);
    // Not weir: its VERSION reads the config from stdin, and `ctr run`
    // never closes the container's stdin (podman's run above covers it).
    let weirctl = containerd.run_container(&[], &image.name, &["/usr/local/bin/weirctl", "--version"])?;
    assert_eq!(weirctl, host_output(&bins, "weirctl", &["--version"], &[])?);
    Ok(())
}
