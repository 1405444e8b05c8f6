//! Default locations shared by every Weir component.

/// Root of Weir's pinned maps, programs and links on bpffs.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/weir";

/// Runtime state that must not outlive a reboot (the endpoint registry).
pub const DEFAULT_RUN_DIR: &str = "/run/weir";

/// Directory of endpoint records under the run dir.
pub const ENDPOINTS_SUBDIR: &str = "endpoints";

/// File under the run dir that weir-policyd touches every few seconds while
/// it runs; CNI STATUS reports the network unavailable when it goes stale.
pub const POLICYD_HEARTBEAT: &str = "policyd.heartbeat";

/// How often policyd touches the heartbeat.
pub const POLICYD_HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A heartbeat older than this means policyd is gone.
pub const POLICYD_HEARTBEAT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30);

/// weir-policyd's local API (read-only HTTP/JSON, mode 0600) under the run
/// dir; `weirctl explain` talks to it.
pub const POLICYD_API_SOCKET: &str = "api.sock";

/// Where container runtimes exec CNI plugins from (containerd's, CRI-O's
/// and podman's default `bin_dir`); `weir-policyd install-cni` installs
/// `weir` there.
pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";

/// Where container runtimes read CNI network configurations from;
/// `weir-policyd install-cni` writes the conflist there.
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";

/// `weir-policyd install-cni`'s record of what it wrote, in the CNI bin
/// dir (a hidden name: runtimes exec only the names a conflist asks for).
pub const INSTALL_RECORD: &str = ".weir-installed.json";

/// weir-policyd's flow log under its run dir (its `--flow-log` default).
pub const POLICYD_FLOW_LOG: &str = "flows.log";
