//! weir-policyd: the Weir node agent.

use clap::{Parser, Subcommand};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weir_policyd::daemon::{self, SourceChoice};
use weir_policyd::install::{self, PodCidrs};
use weir_policyd::node::Backend;
use weir_policyd::source::kube::Access;

/// Watches the cluster (or a directory of manifests) and keeps Weir's pinned
/// BPF maps enforcing its NetworkPolicies.
#[derive(Parser, Debug)]
#[command(name = "weir-policyd", version, subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Read objects from this kubeconfig's cluster.
    #[arg(long, value_name = "PATH", group = "source")]
    kubeconfig: Option<PathBuf>,
    /// Read objects from the API server with the pod's service account.
    #[arg(long, group = "source")]
    in_cluster: bool,
    /// Read objects from a directory of YAML manifests (the lab, bare nodes).
    #[arg(long, value_name = "DIR", group = "source")]
    manifests: Option<PathBuf>,
    /// This node's name (Pods are matched to local interfaces through the
    /// endpoint registry; the name labels logs and selects the Node object).
    #[arg(long, env = "NODE_NAME", required = true)]
    node_name: Option<String>,
    #[arg(long, default_value = weir_common::paths::DEFAULT_BPFFS_ROOT)]
    bpffs_root: PathBuf,
    #[arg(long, default_value = weir_common::paths::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9913")]
    listen: SocketAddr,
    /// Recompile and resync at least this often (seconds).
    #[arg(long, default_value_t = 30)]
    resync_secs: u64,
    /// How pod traffic reaches other nodes. `none`: nothing is routed
    /// between nodes (one node); `host-gw`: a route per remote pod CIDR via
    /// that node's InternalIP (one L2 segment); `vxlan`: a VXLAN device
    /// `weir.<VNI>`, flannel-compatible. Every backend hands this node's
    /// pod CIDRs (Node spec.podCIDRs) and pod MTU to the CNI binary in
    /// <run-dir>/node-network.json.
    #[arg(long, value_enum, default_value = "none")]
    backend: Backend,
    /// VXLAN network identifier (1-16777215); the device is `weir.<VNI>`.
    /// Every node must use the same.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16_777_215))]
    vxlan_vni: u32,
    /// VXLAN UDP port (8472: flannel's and Linux's default). Every node
    /// must use the same.
    #[arg(long, default_value_t = 8472, value_parser = clap::value_parser!(u16).range(1..))]
    vxlan_port: u16,
    /// The interface carrying traffic between nodes [default: the one
    /// holding this node's InternalIP].
    #[arg(long, value_name = "IFACE")]
    underlay_iface: Option<String>,
    /// After a policy change, judge every established flow again on its
    /// next packet and drop it there if the new policy no longer allows it
    /// (`false`: a flow keeps its verdict until its conntrack entry expires,
    /// up to 6 h for TCP).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    rejudge_established: bool,
    /// Map entries one compile slice may produce before policyd takes a
    /// turn for other work (new pods first, object changes, shutdown);
    /// endpoints left over keep their previous entries until a later slice
    /// (`weir_policyd_endpoints_pending`,
    /// `weir_policyd_compile_slices_total{result="over_budget"}`).
    #[arg(long, value_name = "ENTRIES", default_value_t = weir_policyd::daemon::SLICE_BUDGET as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    compile_slice_entries: u64,
    /// The flow log: every drop (and allowed new flows of namespaces that
    /// ask for them) as one JSON line [default: <run-dir>/flows.log].
    #[arg(long, value_name = "PATH")]
    flow_log: Option<PathBuf>,
    /// Rotate the flow log to <PATH>.1 when it would grow past this many
    /// bytes (so at most twice this on disk).
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    flow_log_max_bytes: u64,
    /// Flow log lines per second, sustained; lines over it are counted
    /// (weir_policyd_flow_events_rate_limited_total), not written.
    #[arg(long, value_name = "LINES", default_value_t = 100)]
    flow_log_rate: u32,
    /// Lines the flow log takes at once above its rate.
    #[arg(long, value_name = "LINES", default_value_t = 200)]
    flow_log_burst: u32,
    /// Turn the flow log off: the programs emit no events at all (drops,
    /// audit would-be drops, allows), and verdicts are only counted.
    #[arg(long)]
    no_flow_log: bool,
    /// The programs' event ring, in bytes (a power of two, 4096 to 1 GiB;
    /// 64 bytes an event). A ring of another size is replaced at start,
    /// with the programs of every running pod.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    flow_log_ring_bytes: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install the CNI binary and its conflist on this node's host (the
    /// DaemonSet's init container): `weir` (and any chained plugin the host
    /// lacks) from --from into --bin-dir, then the conflist, with this
    /// node's pod CIDRs, into --conf-dir, last. Each file is written beside
    /// its destination, synced and renamed; any error leaves the node as it
    /// was.
    InstallCni(InstallCniArgs),
    /// Remove Weir from this node's host, completely: refuses (removing
    /// nothing) while pods still use Weir here or weir-policyd runs. Then,
    /// in this order, each step idempotent, stopping at the first failure
    /// (a re-run carries on): the conflist, the binaries install-cni wrote
    /// (the host's own plugins stay), leave_node and any attached program,
    /// Weir's routes (proto 87), its VXLAN device, its bridge once no pod
    /// is on it, the masquerade table,
    /// the network's IPAM store, the pins, the run dir, this Node's
    /// weir.io/ annotations (with API access), the install record. Prints
    /// one line per thing removed.
    Uninstall(UninstallArgs),
}

#[derive(clap::Args, Debug)]
struct UninstallArgs {
    /// Remove this node's annotations through this kubeconfig's cluster.
    #[arg(long, value_name = "PATH", group = "api")]
    kubeconfig: Option<PathBuf>,
    /// Remove this node's annotations with the pod's service account.
    #[arg(long, group = "api")]
    in_cluster: bool,
    /// The Node whose weir.io/ annotations go.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Go on while pods still use Weir on this node: they keep their
    /// interfaces and addresses, but lose NetworkPolicy enforcement, routes
    /// to other nodes and masquerade, and their DEL fails.
    #[arg(long)]
    force: bool,
    /// Remove only files (conflist, binaries, IPAM store, pins, run dir,
    /// record); leave programs, routes, devices, nftables and annotations:
    /// for an install under a prefix (install.sh --prefix) that never ran
    /// on this host.
    #[arg(long, conflicts_with_all = ["kubeconfig", "in_cluster"])]
    files_only: bool,
    /// The host's CNI binary directory.
    #[arg(long, value_name = "DIR", default_value = weir_common::paths::DEFAULT_CNI_BIN_DIR)]
    bin_dir: PathBuf,
    /// The host's CNI configuration directory.
    #[arg(long, value_name = "DIR", default_value = weir_common::paths::DEFAULT_CNI_CONF_DIR)]
    conf_dir: PathBuf,
    /// Weir's bpffs root [default: the conflist's policy.bpffsRoot while it
    /// is there, else the install record's, else /sys/fs/bpf/weir].
    #[arg(long, value_name = "DIR")]
    bpffs_root: Option<PathBuf>,
    /// Weir's run dir [default: the conflist's policy.runDir, else the
    /// record's, else /run/weir].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// The IPAM store's parent directory [default: the conflist's
    /// ipam.dataDir, else the record's, else /var/lib/cni/networks].
    #[arg(long, value_name = "DIR")]
    ipam_data_dir: Option<PathBuf>,
    /// Where the host's / is mounted (a DaemonSet's container): every
    /// place above, given or taken from the conflist or the install record,
    /// is a host path and is reached under DIR; one that is not there is
    /// refused.
    #[arg(long, value_name = "DIR")]
    host_root: Option<PathBuf>,
    /// Once done, wait until terminated (a DaemonSet's container: its pod
    /// stays up on a clean node; the image has no sleep).
    #[arg(long)]
    then_wait: bool,
}

#[derive(clap::Args, Debug)]
struct InstallCniArgs {
    /// Read this node's Node from this kubeconfig's cluster.
    #[arg(long, value_name = "PATH", group = "pod_cidr_source")]
    kubeconfig: Option<PathBuf>,
    /// Read this node's Node with the pod's service account.
    #[arg(long, group = "pod_cidr_source")]
    in_cluster: bool,
    /// This node's pod range, instead of reading the Node (a node without
    /// an API server); one per family, comma-separated or repeated.
    #[arg(long = "pod-cidr", value_name = "CIDR", value_delimiter = ',', group = "pod_cidr_source")]
    pod_cidrs: Vec<IpNet>,
    /// The Node to read (spec.podCIDRs, else spec.podCIDR).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The cluster's pod range, which pods reach without masquerade; once
    /// per family, comma-separated or repeated [default: the shipped
    /// conflist's].
    #[arg(long = "cluster-cidr", value_name = "CIDR", value_delimiter = ',')]
    cluster_cidrs: Vec<IpNet>,
    /// cniVersion of the conflist. 1.0.0: every runtime accepts it. 1.1.0
    /// (STATUS, GC) only where every runtime on the node links libcni >= 1.2
    /// (containerd >= 2.0, CRI-O >= 1.30): libcni 1.1 (containerd 1.6/1.7,
    /// podman 4) rejects its results. Also 0.3.0, 0.3.1, 0.4.0.
    #[arg(long, value_name = "VERSION", default_value = weir_policyd::install::conflist::DEFAULT_CNI_VERSION)]
    cni_version: String,
    /// Where `weir` (and chained plugins the host lacks) are taken from
    /// [default: the directory of this executable].
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,
    /// The host's CNI binary directory.
    #[arg(long, value_name = "DIR", default_value = weir_common::paths::DEFAULT_CNI_BIN_DIR)]
    bin_dir: PathBuf,
    /// The host's CNI configuration directory.
    #[arg(long, value_name = "DIR", default_value = weir_common::paths::DEFAULT_CNI_CONF_DIR)]
    conf_dir: PathBuf,
}

fn main() -> ExitCode {
    weir_policyd::logging::init();
    let args = Args::parse();
    match args.command {
        Some(Command::InstallCni(a)) => install_cni(a),
        Some(Command::Uninstall(a)) => uninstall(a),
        None => daemon(args),
    }
}

fn install_cni(a: InstallCniArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("weir-policyd install-cni: {msg}");
        ExitCode::FAILURE
    };
    let access = match (&a.kubeconfig, a.in_cluster) {
        (Some(p), _) => Some(Access::Kubeconfig(p.clone())),
        (_, true) => Some(Access::InCluster),
        _ => None,
    };
    let pod_cidrs = match (access, a.node_name) {
        _ if !a.pod_cidrs.is_empty() => PodCidrs::Given(a.pod_cidrs),
        (Some(access), Some(node_name)) => PodCidrs::Node { access, node_name },
        (Some(_), None) => return fail("which Node? pass --node-name NAME or set NODE_NAME".into()),
        (None, _) => {
            return fail("where do the pod CIDRs come from? --in-cluster, --kubeconfig PATH or --pod-cidr CIDR".into())
        }
    };
    let from = match a.from {
        Some(d) => d,
        None => match std::env::current_exe() {
            Ok(exe) => exe.parent().map(PathBuf::from).unwrap_or_default(),
            Err(e) => return fail(format!("finding this executable's directory: {e}; pass --from DIR")),
        },
    };
    let opts = install::Options {
        pod_cidrs,
        cluster_cidrs: a.cluster_cidrs,
        cni_version: a.cni_version,
        from,
        bin_dir: a.bin_dir,
        conf_dir: a.conf_dir,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(install::run(&opts)) {
        Ok(done) => {
            let cidrs: Vec<String> = done.pod_cidrs.iter().map(|c| c.to_string()).collect();
            for p in &done.written {
                log::info!("installed {}", p.display());
            }
            for p in &done.unchanged {
                log::info!("{} already up to date", p.display());
            }
            log::info!("pod CIDRs {}: done", cidrs.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{e:#}")),
    }
}

fn uninstall(a: UninstallArgs) -> ExitCode {
    let access = match (&a.kubeconfig, a.in_cluster) {
        (Some(p), _) => Some(Access::Kubeconfig(p.clone())),
        (_, true) => Some(Access::InCluster),
        _ => None,
    };
    let node = match (access, a.node_name) {
        (Some(access), Some(name)) => Some((access, name)),
        (Some(_), None) => {
            eprintln!("weir-policyd uninstall: which Node? pass --node-name NAME or set NODE_NAME");
            return ExitCode::from(2);
        }
        (None, _) => None,
    };
    let places =
        install::uninstall::Places { bpffs_root: a.bpffs_root, run_dir: a.run_dir, ipam_data_dir: a.ipam_data_dir };
    let opts = install::uninstall::Options {
        bin_dir: a.bin_dir,
        conf_dir: a.conf_dir,
        force: a.force,
        files_only: a.files_only,
        node,
        places,
        host_root: a.host_root,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(install::uninstall::run(&opts, &mut |l| println!("{l}"))) {
        Ok(_) => {
            println!("Weir is uninstalled from this node");
            if a.then_wait {
                use std::io::Write;
                let _ = std::io::stdout().flush();
                rt.block_on(async {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                    term.recv().await
                });
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weir-policyd uninstall: {e}");
            ExitCode::FAILURE
        }
    }
}

fn daemon(args: Args) -> ExitCode {
    let source = match (&args.kubeconfig, args.in_cluster, &args.manifests) {
        (Some(p), _, _) => SourceChoice::Kube(Access::Kubeconfig(p.clone())),
        (_, true, _) => SourceChoice::Kube(Access::InCluster),
        (_, _, Some(d)) => SourceChoice::Manifests(d.clone()),
        _ => {
            eprintln!(
                "weir-policyd: say where the objects come from: --in-cluster, --kubeconfig PATH or --manifests DIR"
            );
            return ExitCode::from(2);
        }
    };
    let flow_log_path =
        args.flow_log.clone().unwrap_or_else(|| args.run_dir.join(weir_common::paths::POLICYD_FLOW_LOG));
    let opts = daemon::Options {
        source,
        node_name: args.node_name.expect("clap requires --node-name"),
        bpffs_root: args.bpffs_root,
        run_dir: args.run_dir,
        listen: args.listen,
        resync: Duration::from_secs(args.resync_secs.max(1)),
        node_network: weir_policyd::node::Config {
            backend: args.backend,
            vxlan_vni: args.vxlan_vni,
            vxlan_port: args.vxlan_port,
            underlay_iface: args.underlay_iface,
        },
        rejudge_established: args.rejudge_established,
        compile_slice_entries: usize::try_from(args.compile_slice_entries).unwrap_or(usize::MAX),
        flow_log: weir_policyd::flows::Options {
            enabled: !args.no_flow_log,
            ring_bytes: args.flow_log_ring_bytes,
            path: flow_log_path,
            max_bytes: args.flow_log_max_bytes,
            rate: f64::from(args.flow_log_rate),
            burst: f64::from(args.flow_log_burst),
        },
    };
    // Two workers: policyd shares the node with the pods it serves.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    match rt.block_on(daemon::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
