//! `weir`: invoked by the container runtime with CNI_* in the environment
//! and the network configuration on stdin; the result (or error) goes to
//! stdout as JSON, logs to stderr.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("weir: cannot read stdin: {e}");
    }
    let out = weir_cni::cmd::run(|k| std::env::var(k).ok(), &stdin);
    if let Some(v) = out.stdout {
        let mut so = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut so, &v);
        let _ = so.write_all(b"\n");
        let _ = so.flush();
    }
    std::process::exit(out.exit);
}
