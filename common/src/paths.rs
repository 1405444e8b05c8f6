//! Default locations shared by every Weir component.

/// Root of Weir's pinned maps, programs and links on bpffs.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/weir";

/// Runtime state that must not outlive a reboot (the endpoint registry).
pub const DEFAULT_RUN_DIR: &str = "/run/weir";

/// Directory of endpoint records under the run dir.
pub const ENDPOINTS_SUBDIR: &str = "endpoints";
