//! `weirctl lab`: a one-node cluster made of network namespaces. The node is
//! a netns holding the bridge, every pod a netns plugged in by the real `weir`
//! CNI binary, Services are kube-proxy-style DNAT rules, and a directory of
//! manifests stands in for the API server (weir-policyd watches it).

/// Print a line; a closed stdout (`| head`) must not abort a half-done
/// lab operation, so write errors are ignored.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

pub mod cni;
pub mod demo;
pub mod naming;
pub mod objects;
pub mod ops;
pub mod probe;
pub mod serve;
pub mod services;
pub mod state;
pub mod sys;
pub mod topology;
