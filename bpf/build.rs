//! Compiles every bpf/progs/*.c into OUT_DIR with clang (the eBPF programs are
//! C: Rust eBPF needs a nightly with rust-src, which the build machines lack).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let progs = manifest.join("progs");
    let include = manifest.join("include");
    let clang = std::env::var("WEIR_CLANG").unwrap_or_else(|_| "clang".into());

    println!("cargo:rerun-if-changed={}", include.display());
    println!("cargo:rerun-if-changed={}", progs.display());
    println!("cargo:rerun-if-env-changed=WEIR_CLANG");

    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(&progs).expect("bpf/progs must exist").filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in &entries {
        println!("cargo:rerun-if-changed={}", path.display());
        if path.extension().and_then(|e| e.to_str()) != Some("c") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let obj = out.join(format!("{stem}.o"));
        compile(&clang, path, &include, &progs, &obj);
        if stem == "weir" {
            // The build's identity (`weir_bpf::build_id`), hashed here once:
            // hashing the half-megabyte object at run time cost every CNI
            // ADD about a millisecond.
            let bytes = std::fs::read(&obj).expect("read the compiled object");
            println!("cargo:rustc-env=WEIR_BUILD_ID={:016x}", fnv1a64(&bytes));
        }
    }
}

/// FNV-1a, 64 bits (bpf/src/dataplane.rs checks the two agree).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

fn compile(clang: &str, src: &Path, include: &Path, progs: &Path, obj: &Path) {
    let status = Command::new(clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg(format!("-I{}", include.display()))
        .arg(format!("-I{}", progs.display()))
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(obj)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{clang}` to build the eBPF programs ({e}); install clang and \
                 libbpf-dev (apt-get install clang libbpf-dev) or point WEIR_CLANG at a clang"
            )
        });
    if !status.success() {
        panic!("clang failed on {} ({status})", src.display());
    }
}
